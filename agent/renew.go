package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// maybeRenew sends one renew message when the robot has a Renewer, control
// announced CapRenew, the certificate is due and no renew was sent (or
// failed) within RenewRetry on this connection. Like a heartbeat, a renew
// takes a fresh sequence number and is not queued: if the connection drops,
// the next one asks again. A returned error ends the connection.
func (s *session) maybeRenew(ctx context.Context) error {
	a := s.a
	if a.o.Identity == nil || !s.renewCap {
		return nil
	}
	now := a.o.Now()
	if now.Before(a.renewAt) || !a.o.Identity.NeedsRenewal(now) {
		return nil
	}
	a.renewAt = now.Add(a.o.RenewRetry)
	csr, err := a.o.Identity.RenewalCSR()
	if err != nil {
		a.log.Error("certificate renewal: cannot make a CSR", "err", err, "retry_in", a.o.RenewRetry)
		return nil
	}
	seq, err := a.q.NextSeq()
	if err != nil {
		a.log.Error("renew sequence", "err", err)
		return nil
	}
	b, err := a.encode(protocol.TypeRenew, seq, protocol.Renew{CSR: string(csr)})
	if err != nil {
		return fmt.Errorf("encode renew: %w", err)
	}
	if err := s.write(ctx, b); err != nil {
		return fmt.Errorf("send renew %d: %w", seq, err)
	}
	s.renewSeq = seq
	if len(s.heartbeats) >= maxHeartbeatsInFlight {
		clear(s.heartbeats)
	}
	s.heartbeats[seq] = flight{typ: protocol.TypeRenew, sentAt: time.Now()}
	a.log.Info("certificate due for renewal: sent a CSR to control", "sequence", seq)
	return nil
}

// installCertificate hands control's answer to the Renewer. A certificate
// that does not install (not for the pending key, wrong robot, wrong CA,
// not saved) is retried after RenewRetry like a refused renew.
func (s *session) installCertificate(cert protocol.Certificate) {
	a := s.a
	if a.o.Identity == nil {
		a.log.Warn("ignoring a certificate from control: this agent runs without an identity (insecure mode)")
		return
	}
	s.renewSeq = 0
	if err := a.o.Identity.Install(cert); err != nil {
		a.renewAt = a.o.Now().Add(a.o.RenewRetry)
		a.log.Error("certificate from control not installed; will ask again", "err", err, "retry_in", a.o.RenewRetry)
		return
	}
	a.renewAt = time.Time{}
	a.renewed.Add(1)
	a.log.Info("certificate renewed; the next connection presents it", "not_after", cert.NotAfter)
}

// renewFailed handles control's error answer to a renew.
func (s *session) renewFailed(perr *protocol.Error) {
	a := s.a
	s.renewSeq = 0
	delete(s.heartbeats, perr.Sequence)
	a.renewAt = a.o.Now().Add(a.o.RenewRetry)
	a.log.Error("control refused certificate renewal; will ask again after retry_in or on the next connection",
		"code", perr.Code, "message", perr.Message, "retry_in", a.o.RenewRetry)
}
