package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Command outbox event types. A command is queued through any node; the
// node holding the robot's connection claims and sends it; the robot's
// response (TypeCommandResponse) closes it. Everything goes through the
// log, so no node-to-node channel exists and a node's death loses nothing:
// an unanswered command is resent when the robot reconnects anywhere.
const (
	TypeCommandQueued    = "CommandQueued"
	TypeCommandDelivered = "CommandDelivered"
)

// Command states.
const (
	CommandQueued    = "queued"
	CommandDelivered = "delivered"
	CommandOK        = "ok"
	CommandError     = "error"
	CommandExpired   = "expired"
)

// CommandRecord is a command in the outbox.
type CommandRecord struct {
	ID          string          `json:"id"`
	RobotID     string          `json:"robot_id"`
	Name        string          `json:"name"`
	Args        json.RawMessage `json:"args,omitempty"`
	Status      string          `json:"status"`
	CreatedAt   time.Time       `json:"created_at"`
	Deadline    time.Time       `json:"deadline"`
	DeliveredBy string          `json:"delivered_by,omitempty"`
	DeliveredAt time.Time       `json:"delivered_at,omitzero"`
	AnsweredAt  time.Time       `json:"answered_at,omitzero"`
	Response    json.RawMessage `json:"response,omitempty"`
	Actor       string          `json:"actor,omitempty"`
}

// DeliveredData is the data of CommandDelivered.
type DeliveredData struct {
	ID   string `json:"id"`
	Node string `json:"node"`
}

// applyCommands maintains the outbox table from its events.
func applyCommands(ctx context.Context, tx *sql.Tx, e Event) error {
	var err error
	switch e.Type {
	case TypeCommandQueued:
		var c protocol.Command
		if err = json.Unmarshal(e.Data, &c); err != nil {
			return dataError(e, err)
		}
		args := string(c.Args)
		if args == "" {
			args = "null"
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO commands (id, robot_id, name, args, status, created_at, deadline, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			c.ID, e.RobotID, c.Name, args, CommandQueued, e.Time.UnixNano(), c.Deadline.UnixNano(), e.Actor)
	case TypeCommandDelivered:
		var d DeliveredData
		if err = json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		_, err = tx.ExecContext(ctx, `UPDATE commands SET status = ?, delivered_by = ?, delivered_at = ? WHERE id = ? AND status IN (?, ?)`,
			CommandDelivered, d.Node, e.Time.UnixNano(), d.ID, CommandQueued, CommandDelivered)
	case TypeCommandResponse:
		var r protocol.Response
		if err = json.Unmarshal(e.Data, &r); err != nil {
			return dataError(e, err)
		}
		if r.Status == "progress" {
			_, err = tx.ExecContext(ctx, `UPDATE commands SET response = ? WHERE id = ? AND robot_id = ?`, string(e.Data), r.CommandID, e.RobotID)
			break
		}
		_, err = tx.ExecContext(ctx, `UPDATE commands SET status = ?, answered_at = ?, response = ? WHERE id = ? AND robot_id = ?`,
			r.Status, e.Time.UnixNano(), string(e.Data), r.CommandID, e.RobotID)
	}
	if err != nil {
		return fmt.Errorf("apply %s event: %w", e.Type, err)
	}
	return nil
}

// QueueCommand puts a command for a robot in the outbox.
func (s *Store) QueueCommand(ctx context.Context, robotID string, c protocol.Command, actor string, now time.Time) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	_, err = s.Append(ctx, []Event{{RobotID: robotID, Type: TypeCommandQueued, Time: now.UTC(), Data: data, Actor: actor, CorrelationID: c.ID}})
	return err
}

// Command reads one command.
func (s *Store) Command(ctx context.Context, id string) (CommandRecord, error) {
	rows, err := s.db.QueryContext(ctx, commandSelect+` WHERE id = ?`, id)
	if err != nil {
		return CommandRecord{}, fmt.Errorf("read command %s: %w", id, err)
	}
	defer rows.Close()
	if !rows.Next() {
		return CommandRecord{}, fmt.Errorf("command %s: %w", id, ErrNotFound)
	}
	return scanCommand(rows)
}

// PendingCommands lists a robot's commands not yet delivered (or delivered
// by a node that may have died before the robot answered) and not expired,
// oldest first.
func (s *Store) PendingCommands(ctx context.Context, robotID string, now time.Time) ([]CommandRecord, error) {
	byRobot, err := s.PendingCommandsOf(ctx, []string{robotID}, now)
	return byRobot[robotID], err
}

// PendingCommandsOf is PendingCommands for many robots in a few queries:
// a reconnect storm's hellos ask in batches, not in one round trip to the
// leader per robot.
func (s *Store) PendingCommandsOf(ctx context.Context, robotIDs []string, now time.Time) (map[string][]CommandRecord, error) {
	out := map[string][]CommandRecord{}
	for rest := robotIDs; len(rest) > 0; {
		chunk := rest[:min(len(rest), maxParams-3)]
		rest = rest[len(chunk):]
		args := make([]any, 0, len(chunk)+3)
		for _, id := range chunk {
			args = append(args, id)
		}
		args = append(args, CommandQueued, CommandDelivered, now.UnixNano())
		err := func() error {
			rows, err := s.db.QueryContext(ctx, commandSelect+` WHERE robot_id IN (?`+strings.Repeat(",?", len(chunk)-1)+`)
				AND status IN (?, ?) AND deadline > ? ORDER BY robot_id, created_at`, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				c, err := scanCommand(rows)
				if err != nil {
					return err
				}
				out[c.RobotID] = append(out[c.RobotID], c)
			}
			return rows.Err()
		}()
		if err != nil {
			if len(robotIDs) == 1 {
				return nil, fmt.Errorf("pending commands of %s: %w", robotIDs[0], err)
			}
			return nil, fmt.Errorf("pending commands of %d robots (%s, ...): %w", len(robotIDs), robotIDs[0], err)
		}
	}
	return out, nil
}

const commandSelect = `SELECT id, robot_id, name, args, status, created_at, deadline, delivered_by, delivered_at, answered_at, response, actor FROM commands`

func scanCommand(rows *sql.Rows) (CommandRecord, error) {
	var (
		c                                      CommandRecord
		args, resp                             string
		created, deadline, delivered, answered int64
	)
	if err := rows.Scan(&c.ID, &c.RobotID, &c.Name, &args, &c.Status, &created, &deadline, &c.DeliveredBy, &delivered, &answered, &resp, &c.Actor); err != nil {
		return c, fmt.Errorf("read command row: %w", err)
	}
	if args != "null" {
		c.Args = json.RawMessage(args)
	}
	if resp != "null" {
		c.Response = json.RawMessage(resp)
	}
	c.CreatedAt, c.Deadline, c.DeliveredAt, c.AnsweredAt = timeOrZero(created), timeOrZero(deadline), timeOrZero(delivered), timeOrZero(answered)
	if c.Status != CommandOK && c.Status != CommandError && time.Now().After(c.Deadline) {
		c.Status = CommandExpired
	}
	return c, nil
}
