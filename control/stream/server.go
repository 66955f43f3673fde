package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// Connection limits.
const (
	// MaxClientFrame bounds what a client may send in one frame.
	MaxClientFrame = 64 << 10
	// WriteTimeout is how long one frame may take to write; a client that
	// cannot take a frame this long is disconnected.
	WriteTimeout = 30 * time.Second
	// maxBadRequests is how many refused requests a client may send before
	// it is disconnected.
	maxBadRequests = 32
)

// Request is a frame from the client.
type Request struct {
	// Type is subscribe, unsubscribe or ping.
	Type string `json:"type"`
	Subscription
}

// Reply is a control frame to the client answering a request.
type Reply struct {
	// Type is subscribed, unsubscribed, pong or error.
	Type    string `json:"type"`
	ID      string `json:"id,omitempty"`
	Message string `json:"message,omitempty"`
}

// ParseRequest decodes and validates one client frame. A refused
// subscription is returned with the error, so its id can be answered.
func ParseRequest(data []byte) (Request, error) {
	var r Request
	if len(data) > MaxClientFrame {
		return r, fmt.Errorf("request of %d bytes exceeds %d", len(data), MaxClientFrame)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&r); err != nil {
		return Request{}, fmt.Errorf("request is not a JSON object like {\"type\":\"subscribe\",\"id\":\"s1\",\"topics\":[\"robot.*.heartbeat\"]}: %w", err)
	}
	if dec.More() {
		return Request{}, errors.New("request holds more than one JSON value; send one request per frame")
	}
	switch r.Type {
	case "subscribe":
		if _, err := compile(r.Subscription); err != nil {
			return r, err // the id tells the client which subscription was refused
		}
	case "unsubscribe":
		if r.ID == "" {
			return Request{}, errors.New("unsubscribe needs the subscription's id")
		}
	case "ping":
	default:
		return Request{}, fmt.Errorf("request type %q is not subscribe, unsubscribe or ping", truncate(r.Type, 40))
	}
	return r, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// ServeHTTP upgrades a request to a stream WebSocket. Authentication and
// permission checks belong to whoever mounts it (control/node puts it
// behind the API's bearer tokens with read permission).
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := h.Attach()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer c.Close()
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled, Subprotocols: []string{Subprotocol}})
	if err != nil {
		h.log.Debug("stream websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	conn.SetReadLimit(MaxClientFrame)
	h.serve(r.Context(), conn, c)
}

// serve runs the reader (requests) and the writer (frames) of one client.
func (h *Hub) serve(parent context.Context, conn *websocket.Conn, c *Client) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	readErr := make(chan error, 1)
	go func() {
		readErr <- h.readLoop(ctx, conn, c)
		cancel()
	}()
	for {
		data, err := c.Next(ctx)
		if err != nil {
			var rerr error
			select {
			case rerr = <-readErr:
			default:
			}
			var ce websocket.CloseError
			switch {
			case rerr != nil && (errors.As(rerr, &ce) || parent.Err() != nil):
				conn.CloseNow() // the client left
			case rerr != nil:
				conn.Close(websocket.StatusPolicyViolation, truncate(rerr.Error(), 120))
			case errors.Is(err, ErrClosed):
				conn.Close(websocket.StatusGoingAway, "control node shutting down; reconnect")
			case ctx.Err() != nil:
				conn.CloseNow()
			default: // the hub gave up on the client (critical messages unread)
				conn.Close(websocket.StatusPolicyViolation, truncate(err.Error(), 120))
			}
			return
		}
		if err := h.write(ctx, conn, data); err != nil {
			return
		}
	}
}

func (h *Hub) write(ctx context.Context, conn *websocket.Conn, data []byte) error {
	wctx, cancel := context.WithTimeout(ctx, WriteTimeout)
	defer cancel()
	if err := conn.Write(wctx, websocket.MessageText, data); err != nil {
		conn.CloseNow()
		return err
	}
	return nil
}

// readLoop handles the client's requests until the connection ends.
func (h *Hub) readLoop(ctx context.Context, conn *websocket.Conn, c *Client) error {
	bad := 0
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		var reply Reply
		req, err := ParseRequest(data)
		if typ != websocket.MessageText {
			err = errors.New("send requests as JSON text frames")
		}
		if err == nil {
			switch req.Type {
			case "subscribe":
				err = c.Subscribe(req.Subscription)
				reply = Reply{Type: "subscribed", ID: req.ID}
			case "unsubscribe":
				if !c.Unsubscribe(req.ID) {
					err = fmt.Errorf("no subscription %q", truncate(req.ID, MaxSubscriptionIDLen))
				}
				reply = Reply{Type: "unsubscribed", ID: req.ID}
			case "ping":
				reply = Reply{Type: "pong"}
			}
		}
		if err != nil {
			bad++
			if bad > maxBadRequests {
				return fmt.Errorf("more than %d refused requests", maxBadRequests)
			}
			reply = Reply{Type: "error", ID: req.ID, Message: err.Error()}
		}
		b, _ := json.Marshal(reply)
		if err := c.reply(b); err != nil {
			return err
		}
	}
}
