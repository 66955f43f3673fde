package queue

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/lekiwi/heartbeat/protocol"
)

// crashWriterEnv makes the test binary act as the writer process of
// TestKillDashNineKeepsEveryReturnedPush.
const crashWriterEnv = "LEKIWI_QUEUE_CRASH_WRITER"

// TestKillDashNineKeepsEveryReturnedPush runs a writer in a child process
// that appends as fast as it can and prints each sequence after Append
// returned; the parent kills it with SIGKILL mid-stream, then checks that the
// queue opens and holds every printed item, and that numbering continues
// above all of them.
func TestKillDashNineKeepsEveryReturnedPush(t *testing.T) {
	if path := os.Getenv(crashWriterEnv); path != "" {
		crashWriter(path)
		return
	}
	path := filepath.Join(t.TempDir(), FileName)
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillDashNineKeepsEveryReturnedPush$")
	cmd.Env = append(os.Environ(), crashWriterEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var returned []uint64
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(returned) < 300 {
		s, err := strconv.ParseUint(sc.Text(), 10, 64)
		if err != nil {
			t.Fatalf("writer printed %q", sc.Text())
		}
		returned = append(returned, s)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if len(returned) < 300 {
		t.Fatalf("writer stopped after %d appends", len(returned))
	}

	q := openT(t, path, Options{SeqBlock: 7})
	items := pending(t, q)
	have := map[uint64]string{}
	for _, it := range items {
		have[it.Seq] = string(it.Data)
	}
	for _, s := range returned {
		if have[s] != string(data(s, "payload")) {
			t.Fatalf("item %d returned by Append before the kill is missing or wrong after reopen (%d items held)", s, len(items))
		}
	}
	next, err := q.NextSeq()
	if err != nil {
		t.Fatal(err)
	}
	if last := items[len(items)-1].Seq; next <= last {
		t.Fatalf("sequence after crash %d is not above the last stored %d", next, last)
	}
}

func crashWriter(path string) {
	// A small block so the reservation write is crossed often while killed.
	q, err := Open(path, Options{SeqBlock: 7, MaxItems: 1 << 20, MaxBytes: 1 << 30})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for {
		c, typ := Event, protocol.TypeEvent
		it, _, err := q.Append(c, typ, func(seq uint64) ([]byte, error) { return data(seq, "payload"), nil })
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(it.Seq) // os.Stdout is unbuffered: printed means returned
		if it.Seq%5 == 0 {
			if _, err := q.NextSeq(); err != nil {
				os.Exit(2)
			}
		}
	}
}
