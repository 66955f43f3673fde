package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// Buffers of an upgraded robot connection. Reads need almost none: TLS
// already holds the decrypted record, so the reader only batches the frame
// header's few bytes. Writes need one frame's worth so that a frame
// leaves in one TLS record; acknowledgements and heartbeat replies are
// a few hundred bytes, and a larger frame costs one more record, not an
// error.
const (
	readBufferSize  = 64
	writeBufferSize = 1024
)

// leanHijacker lets coder/websocket take over the connection with small
// buffers of its own instead of net/http's 4 KiB reader and writer, which
// would otherwise stay allocated for the life of every idle robot session.
// It keeps the connection so the session can cut it off: once a close
// handshake has begun, coder/websocket's CloseNow does nothing.
type leanHijacker struct {
	http.ResponseWriter
	conn net.Conn      // set by Hijack
	br   *bufio.Reader // the reader handed over, set by Hijack
}

// Hijack takes the connection from net/http. Bytes the client sent after
// its upgrade request (it may not wait for our 101) move to the new reader.
func (w *leanHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("gateway: the HTTP server's response writer cannot hand over the connection (no http.Hijacker)")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	r, err := carryOver(brw.Reader, conn)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	w.conn, w.br = conn, r
	return conn, bufio.NewReadWriter(r, bufio.NewWriterSize(conn, writeBufferSize)), nil
}

// carryOver returns a small reader over conn that first yields what old
// has buffered. The bytes sit in the new reader's own buffer (coder/websocket
// re-wraps the reader around the bare connection, keeping only what is
// buffered).
func carryOver(old *bufio.Reader, conn io.Reader) (*bufio.Reader, error) {
	n := old.Buffered()
	if n == 0 {
		return bufio.NewReaderSize(conn, readBufferSize), nil
	}
	pending, _ := old.Peek(n)
	r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(pending)), conn), max(readBufferSize, n))
	if _, err := r.Peek(n); err != nil {
		return nil, fmt.Errorf("gateway: carry over %d bytes read ahead of the upgrade: %w", n, err)
	}
	return r, nil
}
