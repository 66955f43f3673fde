package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
)

// Security event types. Their data carries hashes, never secrets.
const (
	TypeTokenCreated      = "TokenCreated"
	TypeTokenRevoked      = "TokenRevoked"
	TypeEnrollmentCreated = "EnrollmentCreated"
	TypeRobotEnrolled     = "RobotEnrolled"
	TypeCertificateIssued = "CertificateIssued"
	TypeRobotRevoked      = "RobotRevoked"
	// TypeAccessDenied is the audit record of a refused robot or user.
	TypeAccessDenied = "AccessDenied"
)

// TokenData is the data of TokenCreated.
type TokenData struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      auth.Role `json:"role"`
	Hash      string    `json:"hash"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// TokenRevokedData is the data of TokenRevoked.
type TokenRevokedData struct {
	ID string `json:"id"`
}

// EnrollmentData is the data of EnrollmentCreated (robot id on the event).
type EnrollmentData struct {
	Hash      string    `json:"hash"`
	ExpiresAt time.Time `json:"expires_at"`
}

// CertInfo describes an issued robot certificate (data of RobotEnrolled and
// CertificateIssued).
type CertInfo struct {
	Serial      string    `json:"serial"`
	Fingerprint string    `json:"fingerprint"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	// EnrollmentHash names the token a RobotEnrolled consumed.
	EnrollmentHash string `json:"enrollment_hash,omitempty"`
}

// RevokedData is the data of RobotRevoked.
type RevokedData struct {
	Serials []string `json:"serials"`
	Reason  string   `json:"reason,omitempty"`
}

// DeniedData is the data of AccessDenied.
type DeniedData struct {
	Reason      string `json:"reason"`
	Remote      string `json:"remote,omitempty"`
	Path        string `json:"path,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	Claimed     string `json:"claimed,omitempty"` // robot id the peer claimed
	Detail      string `json:"detail,omitempty"`
}

// applySecurity maintains the token, enrollment and certificate tables from
// their events; like Apply, it depends only on the event.
func applySecurity(ctx context.Context, tx *sql.Tx, e Event) error {
	var err error
	switch e.Type {
	case TypeTokenCreated:
		var d TokenData
		if err = json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO tokens (id, name, role, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
			d.ID, d.Name, string(d.Role), d.Hash, e.Time.UnixNano(), unixOrZero(d.ExpiresAt))
	case TypeTokenRevoked:
		var d TokenRevokedData
		if err = json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		_, err = tx.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at = 0`, e.Time.UnixNano(), d.ID)
	case TypeEnrollmentCreated:
		var d EnrollmentData
		if err = json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO enrollment_tokens (hash, robot_id, created_at, expires_at) VALUES (?, ?, ?, ?)`,
			d.Hash, e.RobotID, e.Time.UnixNano(), d.ExpiresAt.UnixNano())
	case TypeRobotEnrolled, TypeCertificateIssued:
		var d CertInfo
		if err = json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		if d.EnrollmentHash != "" {
			if _, err = tx.ExecContext(ctx, `UPDATE enrollment_tokens SET used_at = ? WHERE hash = ?`, e.Time.UnixNano(), d.EnrollmentHash); err != nil {
				break
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO certificates (serial, robot_id, fingerprint, not_before, not_after) VALUES (?, ?, ?, ?, ?)`,
			d.Serial, e.RobotID, d.Fingerprint, d.NotBefore.UnixNano(), d.NotAfter.UnixNano())
	case TypeRobotRevoked:
		_, err = tx.ExecContext(ctx, `UPDATE certificates SET revoked_at = ? WHERE robot_id = ? AND revoked_at = 0`, e.Time.UnixNano(), e.RobotID)
	}
	if err != nil {
		return fmt.Errorf("apply %s event: %w", e.Type, err)
	}
	return nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func timeOrZero(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// CreateToken records a new API token (its hash only).
func (s *Store) CreateToken(ctx context.Context, d TokenData, actor string, now time.Time) error {
	data, err := json.Marshal(d)
	if err != nil {
		return err
	}
	_, err = s.Append(ctx, []Event{{Type: TypeTokenCreated, Time: now.UTC(), Data: data, Actor: actor}})
	return err
}

// LookupToken implements auth.TokenLookup.
func (s *Store) LookupToken(ctx context.Context, id string) (auth.TokenRecord, error) {
	var (
		r                    auth.TokenRecord
		role                 string
		created, exp, revokd int64
	)
	err := s.db.QueryRowContext(ctx, `SELECT id, name, role, hash, created_at, expires_at, revoked_at FROM tokens WHERE id = ?`, id).
		Scan(&r.ID, &r.Name, &role, &r.Hash, &created, &exp, &revokd)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w: unknown token %s", auth.ErrInvalid, id)
	}
	if err != nil {
		return r, fmt.Errorf("look up token %s: %w", id, err)
	}
	r.Role, r.CreatedAt, r.ExpiresAt, r.RevokedAt = auth.Role(role), timeOrZero(created), timeOrZero(exp), timeOrZero(revokd)
	return r, nil
}

// Tokens lists API tokens (without hashes).
func (s *Store) Tokens(ctx context.Context) ([]auth.TokenRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, role, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at`)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []auth.TokenRecord
	for rows.Next() {
		var r auth.TokenRecord
		var role string
		var created, exp, revoked int64
		if err := rows.Scan(&r.ID, &r.Name, &role, &created, &exp, &revoked); err != nil {
			return nil, err
		}
		r.Role, r.CreatedAt, r.ExpiresAt, r.RevokedAt = auth.Role(role), timeOrZero(created), timeOrZero(exp), timeOrZero(revoked)
		out = append(out, r)
	}
	return out, rows.Err()
}

// RevokeToken revokes an API token.
func (s *Store) RevokeToken(ctx context.Context, id, actor string, now time.Time) error {
	if _, err := s.LookupToken(ctx, id); err != nil {
		return fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	data, _ := json.Marshal(TokenRevokedData{ID: id})
	_, err := s.Append(ctx, []Event{{Type: TypeTokenRevoked, Time: now.UTC(), Data: data, Actor: actor}})
	return err
}

// CreateEnrollment records a single-use enrollment token (its hash) for a
// robot.
func (s *Store) CreateEnrollment(ctx context.Context, robotID, hash string, expires time.Time, actor string, now time.Time) error {
	data, _ := json.Marshal(EnrollmentData{Hash: hash, ExpiresAt: expires.UTC()})
	_, err := s.Append(ctx, []Event{{RobotID: robotID, Type: TypeEnrollmentCreated, Time: now.UTC(), Data: data, Actor: actor}})
	return err
}

// Enrollment token failures.
var (
	ErrTokenInvalid = errors.New("enrollment token unknown")
	ErrTokenUsed    = errors.New("enrollment token already used")
	ErrTokenExpired = errors.New("enrollment token expired")
)

// SignFunc signs the robot's certificate once its token checked out.
type SignFunc func(robotID string) (CertInfo, error)

// ConsumeEnrollment checks and uses an enrollment token, signing the robot's
// certificate inside the same transaction: a token can never yield two
// certificates, even with two control nodes racing.
func (s *Store) ConsumeEnrollment(ctx context.Context, hash string, now time.Time, sign SignFunc) (string, CertInfo, error) {
	var robotID string
	var info CertInfo
	err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
		var exp, used int64
		err := tx.QueryRowContext(ctx, `SELECT robot_id, expires_at, used_at FROM enrollment_tokens WHERE hash = ?`, hash).Scan(&robotID, &exp, &used)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrTokenInvalid
		case err != nil:
			return err
		case used != 0:
			return ErrTokenUsed
		case !now.Before(time.Unix(0, exp)):
			return ErrTokenExpired
		}
		if info, err = sign(robotID); err != nil {
			return err
		}
		info.EnrollmentHash = hash
		data, err := json.Marshal(info)
		if err != nil {
			return err
		}
		cache := newRobotCache(tx)
		if _, err := appendOne(ctx, tx, cache, Event{RobotID: robotID, Type: TypeRobotEnrolled, Time: now.UTC(), Data: data, Actor: "robot:" + robotID}); err != nil {
			return err
		}
		return cache.flush(ctx)
	})
	return robotID, info, err
}

// RecordCertificate records a renewed robot certificate.
func (s *Store) RecordCertificate(ctx context.Context, robotID string, info CertInfo, now time.Time) error {
	data, _ := json.Marshal(info)
	_, err := s.Append(ctx, []Event{{RobotID: robotID, Type: TypeCertificateIssued, Time: now.UTC(), Data: data, Actor: "robot:" + robotID}})
	return err
}

// RevokeRobot revokes the robot's identity: every certificate issued to it
// up to now, including ones control has no record of (signed offline at a
// bench) — the check is "issued before the revocation", not a serial list.
// It returns the serials control knew of.
func (s *Store) RevokeRobot(ctx context.Context, robotID, reason, actor string, now time.Time) ([]string, error) {
	var serials []string
	err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
		serials = serials[:0]
		rows, err := tx.QueryContext(ctx, `SELECT serial FROM certificates WHERE robot_id = ? AND revoked_at = 0`, robotID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var sn string
			if err := rows.Scan(&sn); err != nil {
				rows.Close()
				return err
			}
			serials = append(serials, sn)
		}
		rows.Close()
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM certificates WHERE robot_id = ?) + (SELECT count(*) FROM robots WHERE id = ?)`, robotID, robotID).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("robot %q is unknown (no certificate, never connected): %w", robotID, ErrNotFound)
		}
		data, _ := json.Marshal(RevokedData{Serials: serials, Reason: reason})
		cache := newRobotCache(tx)
		if _, err := appendOne(ctx, tx, cache, Event{RobotID: robotID, Type: TypeRobotRevoked, Time: now.UTC(), Data: data, Actor: actor}); err != nil {
			return err
		}
		return cache.flush(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("revoke robot %q: %w", robotID, err)
	}
	return serials, nil
}

// RevokedRobots maps each revoked robot to its latest revocation time;
// certificates issued to it before then are void.
func (s *Store) RevokedRobots(ctx context.Context) (map[string]time.Time, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT robot_id, max(time) FROM events WHERE type = ? GROUP BY robot_id`, TypeRobotRevoked)
	if err != nil {
		return nil, fmt.Errorf("list revoked robots: %w", err)
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var id string
		var ns int64
		if err := rows.Scan(&id, &ns); err != nil {
			return nil, err
		}
		out[id] = time.Unix(0, ns).UTC()
	}
	return out, rows.Err()
}

// RevokedSerials lists revoked certificate serials that have not expired
// (expired ones fail verification anyway).
func (s *Store) RevokedSerials(ctx context.Context, now time.Time) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT serial FROM certificates WHERE revoked_at != 0 AND not_after > ?`, now.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("list revoked certificates: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var sn string
		if err := rows.Scan(&sn); err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}
