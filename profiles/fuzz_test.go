package profiles

import (
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must never panic, every
// error line must carry the source name, and whatever it accepts must hold
// the invariants validation promises.
func FuzzParse(f *testing.F) {
	for _, name := range Names() {
		data, err := embedded.ReadFile(name + ".yaml")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "files:\n  - {path: /etc/x, mode: 0755, content: hi}\n"))
	f.Add([]byte("a: &x [*x, *x]\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "fuzz.yaml:") {
					t.Fatalf("error line without source: %q", line)
				}
			}
			if p != nil {
				t.Fatal("Parse returned both a profile and an error")
			}
			return
		}
		if p.Arch != "arm64" || (p.RobotType != LeKiwi && p.RobotType != XLE) {
			t.Fatalf("accepted arch %q robot type %q", p.Arch, p.RobotType)
		}
		if _, err := p.Hostname("10000000abcdef01", "r1"); err != nil {
			t.Fatalf("accepted hostname pattern that does not expand: %v", err)
		}
		for _, file := range p.Files {
			if err := checkFilePath(file.Path); err != nil {
				t.Fatalf("accepted bad path: %v", err)
			}
		}
	})
}
