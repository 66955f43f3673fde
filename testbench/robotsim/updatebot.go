package robotsim

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/protocol"
)

// Update behaviours of an UpdateBot.
const (
	UpdateCommits = "commit" // downloading, trial, committed
	UpdateHangs   = "hang"   // downloading, trial, then nothing: stuck in its trial boot
)

// UpdateBot is a simulated robot speaking the wire protocol directly (mTLS
// WebSocket, hello, heartbeats, events, command responses) that answers
// update commands the way an agent's updater reports them, without
// writing a disk: deployment scenarios need many of them, and the real
// updater is proven on its own (agent/ota) and end to end (TestOTAEndToEnd). Unacknowledged messages are resent after a reconnect, as the
// agent's queue does, so a control node's death loses nothing.
type UpdateBot struct {
	ID        string
	Type      protocol.RobotType
	Behaviour string
	// StepDelay is the time between reported update states.
	StepDelay time.Duration

	servers []string
	client  *http.Client
	stream  string

	mu        sync.Mutex
	seq       uint64
	unacked   map[uint64][]byte
	conn      *websocket.Conn
	commands  map[string]protocol.UpdateArgs // update commands received, by id
	teleop    bool
	updatedIn []string // commands that arrived while teleoperated
}

// NewUpdateBots makes n bots with certificates from ca, numbered like
// RobotID.
func NewUpdateBots(n int, servers []string, ca *pki.CA, dir string) ([]*UpdateBot, error) {
	var bots []*UpdateBot
	for i := range n {
		id, typ := RobotID(i)
		ident, err := NewIdentity(ca, id, 0, filepath.Join(dir, id))
		if err != nil {
			return nil, err
		}
		bots = append(bots, &UpdateBot{ID: id, Type: typ, Behaviour: UpdateCommits, StepDelay: 100 * time.Millisecond,
			servers: servers, client: ident.HTTPClient(), stream: "bot-" + id,
			unacked: map[uint64][]byte{}, commands: map[string]protocol.UpdateArgs{}})
	}
	return bots, nil
}

// Run keeps the bot connected (rotating through the servers) until ctx ends.
func (b *UpdateBot) Run(ctx context.Context) {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := b.session(ctx, b.servers[attempt%len(b.servers)])
		if ctx.Err() != nil {
			return
		}
		_ = err // the next server is tried after a pause, as an agent would
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (b *UpdateBot) session(ctx context.Context, server string) error {
	url := "wss" + strings.TrimPrefix(server, "https") + "/v1/agent"
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(hctx, url, &websocket.DialOptions{HTTPClient: b.client})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	b.mu.Lock()
	b.seq++
	hello, _ := b.encode(protocol.TypeHello, b.seq, protocol.Hello{MinVersion: protocol.MinVersion, MaxVersion: protocol.Version,
		AgentVersion: "updatebot", Stream: b.stream, RobotType: b.Type, Hardware: protocol.Hardware{Model: "Raspberry Pi 5 Model B Rev 1.0"},
		Capabilities: []string{protocol.CapEvents, protocol.CapCommands}})
	b.mu.Unlock()
	if err := conn.Write(hctx, websocket.MessageText, hello); err != nil {
		return err
	}
	if _, _, err := conn.Read(hctx); err != nil {
		return err
	}
	b.mu.Lock()
	b.conn = conn
	// Resend what control never acknowledged, oldest first.
	var seqs []uint64
	for s := range b.unacked {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, s := range seqs {
		_ = conn.Write(ctx, websocket.MessageText, b.unacked[s])
	}
	b.mu.Unlock()
	defer func() { b.mu.Lock(); b.conn = nil; b.mu.Unlock() }()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
			b.mu.Lock()
			b.seq++
			frame, _ := b.encode(protocol.TypeHeartbeat, b.seq, protocol.Heartbeat{UptimeSeconds: 1})
			b.mu.Unlock()
			if conn.Write(sctx, websocket.MessageText, frame) != nil {
				conn.CloseNow()
				return
			}
		}
	}()
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		env, err := protocol.Decode(data)
		if err != nil {
			continue
		}
		switch env.Type {
		case protocol.TypeAck:
			ack, _ := protocol.DecodePayload[protocol.Ack](env)
			b.mu.Lock()
			for _, s := range ack.Sequences {
				delete(b.unacked, s)
			}
			b.mu.Unlock()
		case protocol.TypeCommand:
			cmd, err := protocol.DecodePayload[protocol.Command](env)
			if err == nil {
				b.command(ctx, cmd)
			}
		}
	}
}

func (b *UpdateBot) encode(t protocol.Type, seq uint64, payload any) ([]byte, error) {
	env, err := protocol.New(t, b.ID, seq, time.Now(), payload)
	if err != nil {
		return nil, err
	}
	return protocol.Encode(env)
}

// send queues a durable message (event or response) and writes it if
// connected; it stays until acknowledged.
func (b *UpdateBot) send(ctx context.Context, t protocol.Type, payload any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	frame, err := b.encode(t, b.seq, payload)
	if err != nil {
		return
	}
	b.unacked[b.seq] = frame
	if b.conn != nil {
		_ = b.conn.Write(ctx, websocket.MessageText, frame)
	}
}

// command answers a command once (control redelivers unanswered ones after
// a reconnect).
func (b *UpdateBot) command(ctx context.Context, cmd protocol.Command) {
	b.mu.Lock()
	_, seen := b.commands[cmd.ID]
	var args protocol.UpdateArgs
	if cmd.Name == protocol.CommandUpdate {
		_ = json.Unmarshal(cmd.Args, &args)
		b.commands[cmd.ID] = args
		if b.teleop && !args.Rollback {
			b.updatedIn = append(b.updatedIn, cmd.ID)
		}
	}
	b.mu.Unlock()
	if seen {
		return
	}
	if cmd.Name != protocol.CommandUpdate {
		b.send(ctx, protocol.TypeResponse, protocol.Response{CommandID: cmd.ID, Status: "error", Message: "updatebot answers update only"})
		return
	}
	b.send(ctx, protocol.TypeResponse, protocol.Response{CommandID: cmd.ID, Status: "ok"})
	go func() {
		report := func(state, reason string) {
			us, _ := json.Marshal(protocol.UpdateState{DeploymentID: args.DeploymentID, Version: args.Version, State: state, Reason: reason, Since: time.Now()})
			b.send(ctx, protocol.TypeEvent, protocol.Event{Kind: protocol.EventUpdate, Data: us})
		}
		steps := []string{protocol.UpdateDownloading, protocol.UpdateTrial, protocol.UpdateCommitted}
		if args.Rollback {
			steps = []string{protocol.UpdateRolledBack}
		} else if b.Behaviour == UpdateHangs {
			steps = steps[:2]
		}
		for _, s := range steps {
			select {
			case <-ctx.Done():
				return
			case <-time.After(b.StepDelay):
			}
			reason := ""
			if s == protocol.UpdateRolledBack {
				reason = "rollback requested by deployment"
			}
			report(s, reason)
		}
	}()
}

// Teleop reports teleoperation starting or stopping.
func (b *UpdateBot) Teleop(ctx context.Context, active bool) {
	b.mu.Lock()
	b.teleop = active
	b.mu.Unlock()
	kind := protocol.EventTeleopStopped
	if active {
		kind = protocol.EventTeleopStarted
	}
	b.send(ctx, protocol.TypeEvent, protocol.Event{Kind: kind})
}

// Updates counts distinct update and rollback commands the bot received.
func (b *UpdateBot) Updates() (updates, rollbacks int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, a := range b.commands {
		if a.Rollback {
			rollbacks++
		} else {
			updates++
		}
	}
	return updates, rollbacks
}

// UpdatedWhileTeleoperated lists update commands that arrived mid-drive.
func (b *UpdateBot) UpdatedWhileTeleoperated() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.updatedIn...)
}

// Connected reports whether the bot holds a session.
func (b *UpdateBot) Connected() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conn != nil
}

// StartUpdateBots runs every bot until ctx ends; the returned wait blocks
// until they all stopped.
func StartUpdateBots(ctx context.Context, bots []*UpdateBot) (wait func()) {
	var wg sync.WaitGroup
	for _, b := range bots {
		wg.Add(1)
		go func() { defer wg.Done(); b.Run(ctx) }()
	}
	return wg.Wait
}
