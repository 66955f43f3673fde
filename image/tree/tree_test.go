package tree

import (
	"testing"
	"time"
)

func TestCleanAndOrder(t *testing.T) {
	for in, want := range map[string]string{"./etc/x": "etc/x", "/etc//x/": "etc/x", "": ".", "/": ".", "a/./b": "a/b"} {
		got, err := Clean(in)
		if err != nil || got != want {
			t.Errorf("Clean(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"../x", "a/../../x", "a/\x00"} {
		if _, err := Clean(bad); err == nil {
			t.Errorf("Clean(%q) accepted", bad)
		}
	}
	tr := New()
	mt := time.Unix(1700000000, 0)
	for _, p := range []string{"a-b", "a/b", "a/c/d", "b"} {
		if err := tr.AddBytes(p, []byte(p), 0o644, mt); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	tr.Walk(func(e *Entry) error { got = append(got, e.Path); return nil })
	want := []string{".", "a", "a/b", "a/c", "a/c/d", "a-b", "b"}
	if len(got) != len(want) {
		t.Fatalf("walk %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("walk %v, want %v", got, want)
		}
	}
	if err := tr.AddBytes("b/under-a-file", nil, 0o644, mt); err == nil {
		t.Fatal("a path under a file was accepted")
	}
	if data, err := tr.ReadFile("a/c/d"); err != nil || string(data) != "a/c/d" {
		t.Fatalf("ReadFile: %q %v", data, err)
	}
	tr.Remove("a")
	if _, ok := tr.Get("a/c/d"); ok || tr.Len() != 3 {
		t.Fatalf("Remove left %d entries", tr.Len())
	}
}
