package pid1

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReapCollectsOrphans makes the test process a subreaper (what PID 1
// is by nature), starts a shell that leaves a background child behind and
// exits, and checks that reap collects both: the shell, and the orphan the
// kernel hands over when the shell is gone.
func TestReapCollectsOrphans(t *testing.T) {
	if err := becomeReaper(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	var mu sync.Mutex
	reaped := map[int]unix.WaitStatus{}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		reap(ctx, func(pid int, ws unix.WaitStatus) { mu.Lock(); reaped[pid] = ws; mu.Unlock() })
		close(stopped)
	}()
	t.Cleanup(func() { cancel(); <-stopped })

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// Not os/exec: its Wait would race reap for the shell's status, as
	// the package comment warns.
	shell, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "sleep 0.3 & echo $!; exit 7"}, &syscall.ProcAttr{Files: []uintptr{0, w.Fd(), 2}})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		sh, okSh := reaped[shell]
		_, okOrphan := reaped[orphan]
		mu.Unlock()
		if okSh && okOrphan {
			if sh.ExitStatus() != 7 {
				t.Errorf("the shell's status is %d, want 7", sh.ExitStatus())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s reaped %v, want the shell %d and its orphan %d", reaped, shell, orphan)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); err == nil {
		t.Errorf("the orphan %d is still in /proc: a zombie", orphan)
	}
}
