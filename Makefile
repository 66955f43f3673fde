# Lekiwi Heartbeat — build, run and test.
#   make run    install what is missing, build, start a control node + 50 simulated robots
#   make test   install what is missing, run every test
SHELL := /bin/bash
.DEFAULT_GOAL := build
export PATH := /usr/local/go/bin:$(PATH)
export CGO_LDFLAGS_ALLOW := -Wl,-z,now
GO      ?= go
TAGS    := libsqlite3
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/lekiwi/heartbeat/internal/version.linked=$(VERSION)
RUN_DIR ?= .run

# Debian packages: dqlite 1.11 (and what its headers include) for control,
# test peers for the test suite.
DEB_BUILD := gcc pkg-config libdqlite-dev libraft-dev libuv1-dev libsqlite3-dev
DEB_TEST  := $(DEB_BUILD) procps openssl iproute2 iptables \
             e2fsprogs dosfstools mtools fdisk bmap-tools docker-registry genimage xz-utils zstd cloud-init \
             acl attr libcap2-bin \
             mount busybox tftp-hpa curl dnsmasq-base casync xdelta3 avahi-daemon avahi-utils dbus \
             chromium systemd qemu-system-arm device-tree-compiler cpio debian-archive-keyring \
             mmdebstrap qemu-user-static arch-test

define ensure_debs
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  else \
	    echo "missing packages:" $$missing "- this needs Debian bookworm (dqlite 1.11) as root, or: sudo apt-get install" $$missing >&2; exit 1; \
	  fi; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go toolchain not found: install Go 1.26 (/usr/local/go)" >&2; exit 1; }
endef

.PHONY: deps deps-test build run test lint bench clean

deps:
	$(call ensure_debs,$(DEB_BUILD))

deps-test:
	$(call ensure_debs,$(DEB_TEST))

build: deps
	$(GO) build -tags $(TAGS) -ldflags '$(LDFLAGS)' -o bin/control ./cmd/control
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/agent ./cmd/agent
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -ldflags '$(LDFLAGS)' -o bin/agent-linux-arm64 ./cmd/agent
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/provision ./cmd/provision
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/netboot ./cmd/netboot
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -ldflags '$(LDFLAGS)' -o bin/netboot-linux-arm64 ./cmd/netboot
	$(GO) build -tags $(TAGS) -ldflags '$(LDFLAGS)' -o bin/fleet ./testbench/cmd/fleet

# One control node on an embedded default data dir plus 50 simulated robots.
run: build
	./bin/fleet demo --robots 50 --data-dir $(RUN_DIR)/control

# Pure-Go packages run first under the race detector; then every package
# (cgo/dqlite included) once more without it, the chaos scenarios last and
# alone: they time failovers of a 3-process cluster on this 2-core machine,
# and beside another package's tests (as -p 2 ran them once testbench was
# split) a killed leader's writes came back after 5-7.6 s instead of ~2 s.
# Then the real-boot lab alone (a LeKiwi board under QEMU TCG, which takes
# both cores, from bare board to robot and through one A/B update, plus a
# held board); `make vm-test` adds the XLE board, a rolled-back and a hung
# trial, and the power-cut sweep.
test: deps-test
	$(GO) vet -tags $(TAGS) ./...
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/agent
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/provision
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/netboot
	$(GO) test -race -count=1 -timeout 10m ./protocol/... ./agent/... ./cmd/agent/... ./control/pki/... ./control/auth/... ./cmd/provision/...
	$(GO) test -tags $(TAGS) -count=1 -timeout 15m -p 2 $$($(GO) list -tags $(TAGS) ./... | grep -v -E '/testbench/(chaos|realboot)$$')
	$(GO) test -tags $(TAGS) -count=1 -timeout 10m ./testbench/chaos
	$(GO) test -tags $(TAGS) -count=1 -timeout 30m ./testbench/realboot

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags $(TAGS) ./...

# Heartbeat ingest, ack latency and memory at 1,000 robots; agent RSS/CPU.
bench: build
	ulimit -n 20000; ./bin/fleet bench --robots 1000 --duration 30s --control-binary bin/control --agent-binary bin/agent

clean:
	rm -rf bin $(RUN_DIR)

# Provision flash vs bmaptool copy vs dd (4 GiB image, 1 GiB data,
# file targets with fsync), and 4 vs 1 blkio-throttled loop devices (root).
.PHONY: bench-flash
bench-flash: build deps-test
	$(GO) run ./testbench/cmd/flashbench --provision bin/provision

# The VM lab's long tests: the smoke tests of `make test` plus the XLE's
# two servo buses and boot time per emulated CPU model (minutes of TCG).
# VM_LOGS keeps every VM's console and QEMU logs.
VM_LOGS ?= $(RUN_DIR)/vmlab
# VM_CUTS power cuts at random points of as many updates of the LeKiwi robot
# (a few minutes each under TCG), placed by VM_SEED.
VM_CUTS ?= 20
VM_SEED ?= 1
.PHONY: vm-test
vm-test: deps-test
	$(GO) test -count=1 -timeout 20m -v ./testbench/vmlab/ -args -vmlab.long -vmlab.logdir=$(abspath $(VM_LOGS))
	$(GO) test -tags $(TAGS) -count=1 -timeout 240m -v ./testbench/realboot/ -args -realboot.all -realboot.cuts=$(VM_CUTS) -realboot.seed=$(VM_SEED)

# HA chaos acceptance at full size: 2 control nodes + witness as
# real processes, 1,000 simulated agents; kill -9 of the leader, partition
# (network namespace + iptables, needs root), rolling restart, witness loss.
# `make test` runs the same tests with 200 agents.
.PHONY: chaos
chaos: deps-test
	ulimit -n 20000; $(GO) test -tags $(TAGS) -run '^TestChaos' -count=1 -timeout 30m -v ./testbench/chaos -args -chaos.agents=1000

# Scale scenarios (unattended; every process, data dir and temp
# file is removed at the end, the whole run ends within SCALE_BUDGET).
# One mTLS control node at 1k/5k/10k/19k robots with the heartbeat interval
# ramped down to saturation, reconnect storms, 100 /v1/stream subscribers;
# then a 4-member cluster (3 voters + standby) with SCALE_CLUSTER_ROBOTS (0 skips it). The
# simulators run as child processes of bin/scalebench (8,000 robots each,
# under the 20,000 open-file limit). Results: $(SCALE_OUT)/scale.{md,json,png}.
SCALE_OUT            ?= .run/bench-scale
SCALE_SIZES          ?= 1000,5000,10000,19000
SCALE_CLUSTER_ROBOTS ?= 50000
SCALE_BUDGET         ?= 150m
SCALE_ARGS           ?= --cluster-connect-rate 100 --db-network-latency 200ms
.PHONY: bench-scale
bench-scale: build
	$(GO) build -tags $(TAGS) -ldflags '$(LDFLAGS)' -o bin/scalebench ./testbench/cmd/scalebench
	./bin/scalebench run --control-binary bin/control --out $(SCALE_OUT) --sizes $(SCALE_SIZES) \
	  --cluster-robots $(SCALE_CLUSTER_ROBOTS) --budget $(SCALE_BUDGET) $(SCALE_ARGS)
