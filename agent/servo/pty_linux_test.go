package servo

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal's master and its slave's path: the
// slave is a real tty, so Open configures it through go.bug.st/serial
// exactly as it would a USB serial adapter.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here (/dev/ptmx: %v)", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pty number: %v", err)
	}
	return m, fmt.Sprintf("/dev/pts/%d", n)
}

// TestOpenRealTTY pings through a real tty: servos 1-3 answer from the
// pty's master side, the rest stay silent.
func TestOpenRealTTY(t *testing.T) {
	master, path := openPTY(t)
	bus, err := Open(path, 20*time.Millisecond)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	defer bus.Close()
	// Raw mode on the slave is go.bug.st/serial's job; make the master raw
	// too so that 0xFF bytes pass untouched.
	if tio, err := unix.IoctlGetTermios(int(master.Fd()), unix.TCGETS); err == nil {
		tio.Iflag, tio.Oflag, tio.Lflag = 0, 0, 0
		unix.IoctlSetTermios(int(master.Fd()), unix.TCSETS, tio)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		buf := make([]byte, 64)
		var pending []byte
		for {
			select {
			case <-done:
				return
			default:
			}
			master.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			n, err := master.Read(buf)
			if err != nil && n == 0 {
				continue
			}
			pending = append(pending, buf[:n]...)
			for {
				in, used, err := ParseStatus(pending)
				pending = pending[used:]
				if err != nil {
					break
				}
				if in.Error == InstPing && in.ID >= 1 && in.ID <= 3 {
					master.Write([]byte{0xFF, 0xFF, in.ID, 2, 0, checksum([]byte{in.ID, 2, 0})})
				}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var found []int
	for id := 1; id <= 6; id++ {
		ok, err := bus.Ping(ctx, id)
		if err != nil {
			t.Fatalf("Ping(%d): %v", id, err)
		}
		if ok {
			found = append(found, id)
		}
	}
	if fmt.Sprint(found) != "[1 2 3]" {
		t.Errorf("answering IDs %v, want [1 2 3]", found)
	}
}
