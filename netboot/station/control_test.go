//go:build libsqlite3

// This test runs the station against a real control API (dqlite store,
// mTLS with a node certificate), so it needs cgo and the libsqlite3 tag,
// as `make test` gives it; package station itself stays free of control.
package station

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/netboot/controlapi"
	"github.com/lekiwi/heartbeat/protocol"
)

func TestWithRealControl(t *testing.T) {
	ca, err := pki.Create(pki.CreateOptions{Name: "station test CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	st, reg := storetest.Open(t), prometheus.NewRegistry()
	a, err := api.New(st, api.Options{Logger: storetest.Logger(), Registerer: reg, Gatherer: reg, CA: ca,
		Auth: &auth.Authenticator{Tokens: st, Nodes: ca.VerifyNode}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	a.Register(mux)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	nodeCert, err := ca.NodeTLSCertificate(pki.NodeRequest{Name: "station-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	trust := x509.NewCertPool()
	trust.AddCert(srv.Certificate())
	client, err := controlapi.NewWithTLS(srv.URL, &tls.Config{RootCAs: trust, Certificates: []tls.Certificate{nodeCert}}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	b := newBench(t)
	station := b.start(t, client)
	for _, c := range []struct {
		serial  string
		report  protocol.HardwareReport
		profile string
	}{{"d83add01", lekiwiReport("d83add01"), "lekiwi"}, {"d83add02", xleReport("d83add02"), "xle"}} {
		token, _, _ := station.netboot(t, c.serial)
		var plan protocol.StationPlan
		if code := station.call(t, "POST", protocol.StationReportPath, token, c.report, &plan); code != 200 {
			t.Fatalf("report: %d", code)
		}
		if plan.Action != protocol.PlanInstall || plan.RobotID != protocol.FactoryRobotID(c.profile, c.serial) ||
			!strings.HasPrefix(plan.EnrollToken, api.EnrollmentTokenPrefix) || plan.CAPEM != string(ca.CertPEM) {
			t.Fatalf("%s: plan %+v", c.serial, plan)
		}
		if code := station.call(t, "POST", protocol.StationProgressPath, token, protocol.StationProgress{Step: StepIdentity, Status: StatusDone}, nil); code != http.StatusNoContent {
			t.Fatalf("progress: %d", code)
		}
	}
	// Control has every board's steps, under the robot id once known.
	eventually(t, "events stored by control", func() bool { return station.Outbox().Pending == 0 })
	evs, err := st.Events(context.Background(), 0, 100, "xle-d83add02")
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, e := range evs {
		var fs protocol.FactoryStep
		if e.Type == protocol.EventFactoryStep && json.Unmarshal(e.Data, &fs) == nil {
			steps = append(steps, fs.Step+"/"+fs.Status)
		}
	}
	if strings.Join(steps, " ") != "identity/done identity/done online/waiting" {
		t.Fatalf("control's events for xle-d83add02: %v", steps)
	}
}
