package testbench

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/lekiwi/heartbeat/"

// TestLayers pins the import rules docs/ARCHITECTURE.md ("Packages")
// states, so that a convenient import across a layer fails here instead of
// quietly tying, say, the image builder to the agent or a simulator into a
// product binary. Each rule lists the packages (with what they link) that
// must not depend on a set of others.
func TestLayers(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to list imports: %v", err)
	}
	for _, rule := range []struct {
		name      string
		roots     []string
		forbidden func(dep string) bool
	}{
		{"protocol imports nothing of ours", []string{"./protocol"},
			func(d string) bool { return d != "protocol" }},
		{"image never imports the agent, control, netboot or provision", []string{"./image/..."},
			prefixes("agent/", "control/", "netboot/", "provision/")},
		{"the agent imports no control or netboot", []string{"./agent/...", "./cmd/agent"},
			prefixes("control/", "netboot/")},
		{"provision and netboot reach control only through protocol", []string{"./provision/...", "./netboot/...", "./cmd/netboot"},
			prefixes("control/", "agent/")},
		// The technician's command also holds the fleet CA (control/pki, a
		// library with no server in it) and builds images that install the
		// agent's unit (agent/systemd, the unit text and nothing else).
		{"the provision command adds only the CA library and the agent's unit", []string{"./cmd/provision"},
			func(d string) bool {
				return d != "control/pki" && d != "agent/systemd" && prefixes("control/", "agent/")(d)
			}},
		{"no product binary links a test double or the lab", []string{"./cmd/control", "./cmd/agent", "./cmd/provision", "./cmd/netboot"},
			func(d string) bool {
				return strings.HasPrefix(d, "testbench") || strings.HasSuffix(d, "test") || strings.Contains(d, "test/")
			}},
	} {
		t.Run(rule.name, func(t *testing.T) {
			args := append([]string{"list", "-tags", "libsqlite3", "-deps", "-f", "{{.ImportPath}}"}, rule.roots...)
			cmd := exec.Command(goTool, args...)
			cmd.Dir = ".."
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go %s: %v", strings.Join(args, " "), err)
			}
			var ours int
			for _, dep := range strings.Fields(string(out)) {
				rel, ok := strings.CutPrefix(dep, module)
				if !ok {
					continue
				}
				ours++
				if rule.forbidden(rel) {
					t.Errorf("%v depend on %s", rule.roots, rel)
				}
			}
			if ours == 0 {
				t.Fatalf("go list %v listed none of the module's packages: the rule checks nothing", rule.roots)
			}
		})
	}
}

// prefixes is a rule's forbidden set: every package under one of ps.
func prefixes(ps ...string) func(string) bool {
	return func(d string) bool {
		for _, p := range ps {
			if d == strings.TrimSuffix(p, "/") || strings.HasPrefix(d, p) {
				return true
			}
		}
		return false
	}
}
