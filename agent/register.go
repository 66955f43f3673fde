package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/protocol"
)

// register dials url, sends hello and waits for the reply. On success the
// connection is returned ready for serve and the heartbeat interval adopted.
func (a *Agent) register(ctx context.Context, url string) (*websocket.Conn, error) {
	hctx, cancel := context.WithTimeout(ctx, a.o.HandshakeTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(hctx, url, &websocket.DialOptions{HTTPClient: a.o.HTTPClient})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w (is control running and the URL right?)", url, err)
	}
	conn.SetReadLimit(protocol.MaxFrameBytes)
	reply, err := a.hello(hctx, conn)
	if err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("hello to %s: %w", url, err)
	}
	a.hbInterval = time.Duration(reply.HeartbeatIntervalMS) * time.Millisecond
	a.serverCaps = reply.Capabilities
	a.log.Info("registered with control", "server", url, "node", reply.NodeID, "version", reply.Version,
		"heartbeat_interval", a.hbInterval, "pending", a.q.Stats().Pending, "capabilities", reply.Capabilities)
	return conn, nil
}

func (a *Agent) hello(ctx context.Context, conn *websocket.Conn) (protocol.HelloReply, error) {
	seq, err := a.q.NextSeq()
	if err != nil {
		return protocol.HelloReply{}, err
	}
	h := protocol.Hello{
		MinVersion:   protocol.MinVersion,
		MaxVersion:   protocol.Version,
		AgentVersion: a.o.AgentVersion,
		Capabilities: a.o.Capabilities,
		Stream:       a.q.Stream(),
		RobotType:    a.o.RobotType,
		Hardware:     a.o.Hardware,
		OSVersion:    a.tel.last.OSVersion,
		Packages:     a.o.Packages,
		Image:        a.o.Image,
	}
	b, err := a.encode(protocol.TypeHello, seq, h)
	if err != nil {
		return protocol.HelloReply{}, fmt.Errorf("encode hello: %w", err)
	}
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		return protocol.HelloReply{}, fmt.Errorf("send hello: %w", err)
	}
	typ, data, err := conn.Read(ctx)
	if err != nil {
		if st := websocket.CloseStatus(err); st != -1 {
			return protocol.HelloReply{}, fmt.Errorf("control closed the connection instead of answering hello (status %d): %w", st, err)
		}
		return protocol.HelloReply{}, fmt.Errorf("read hello reply: %w", err)
	}
	if typ != websocket.MessageText {
		return protocol.HelloReply{}, errors.New("hello reply is a binary frame, want JSON text")
	}
	env, err := protocol.Decode(data)
	if err != nil {
		return protocol.HelloReply{}, fmt.Errorf("hello reply: %w", err)
	}
	switch env.Type {
	case protocol.TypeHello:
		reply, err := protocol.DecodePayload[protocol.HelloReply](env)
		if err != nil {
			return protocol.HelloReply{}, fmt.Errorf("hello reply: %w", err)
		}
		return reply, nil
	case protocol.TypeError:
		perr, err := protocol.DecodePayload[protocol.Error](env)
		if err != nil {
			return protocol.HelloReply{}, fmt.Errorf("control refused hello with an unreadable error: %w", err)
		}
		return protocol.HelloReply{}, fmt.Errorf("control refused hello: %w", &perr)
	default:
		return protocol.HelloReply{}, fmt.Errorf("control answered hello with a %s message", env.Type)
	}
}
