package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/protocol"
)

// factoryServer is the API over mTLS, as control serves it: client
// certificates requested, node certificates admitted as role node.
func factoryServer(t *testing.T) (*store.Store, *pki.CA, *httptest.Server) {
	t.Helper()
	ca, err := pki.Create(pki.CreateOptions{Name: "factory test CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	st, reg := storetest.Open(t), prometheus.NewRegistry()
	a, err := New(st, Options{Logger: storetest.Logger(), Registerer: reg, Gatherer: reg, CA: ca,
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
	return st, ca, srv
}

func nodeClient(t *testing.T, srv *httptest.Server, ca *pki.CA, name string) *http.Client {
	t.Helper()
	c := srv.Client()
	var certs []tls.Certificate
	if ca != nil {
		certPEM, keyPEM, err := ca.IssueNode(pki.NodeRequest{Name: name}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		certs = []tls.Certificate{cert}
	}
	tr := c.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = certs
	return &http.Client{Transport: tr}
}

func post(t *testing.T, c *http.Client, url string, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := c.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func TestFactoryRoutesNeedANodeCertificate(t *testing.T) {
	_, ca, srv := factoryServer(t)
	other, err := pki.Create(pki.CreateOptions{Name: "someone else's CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	req := protocol.FactoryRobotRequest{Serial: "d83add01", Profile: "lekiwi"}
	for _, c := range []struct {
		name   string
		client *http.Client
		want   int
	}{
		{"no certificate", nodeClient(t, srv, nil, ""), http.StatusUnauthorized},
		{"foreign CA's node certificate", nodeClient(t, srv, other, "station-x"), http.StatusUnauthorized},
		{"this fleet's station", nodeClient(t, srv, ca, "station-1"), http.StatusCreated},
	} {
		if code, body := post(t, c.client, srv.URL+"/v1/factory/robots", req); code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, code, body, c.want)
		}
	}
	// A node may not do what engineers do.
	code, _ := post(t, nodeClient(t, srv, ca, "station-1"), srv.URL+"/v1/enrollments", protocol.EnrollmentRequest{RobotID: "kiwi-1"})
	if code != http.StatusForbidden {
		t.Fatalf("node creating an arbitrary enrollment: %d, want 403", code)
	}
}

// A station's identity request yields a token the robot enrolls with, under
// the id profile-serial; once enrolled, the board cannot be given a second
// identity without a revocation.
func TestFactoryRobotEnrollsOnce(t *testing.T) {
	st, ca, srv := factoryServer(t)
	station := nodeClient(t, srv, ca, "station-1")
	for _, bad := range []protocol.FactoryRobotRequest{{Serial: "xyz", Profile: "lekiwi"}, {Serial: "d83add01", Profile: "Bad_Profile"}} {
		if code, body := post(t, station, srv.URL+"/v1/factory/robots", bad); code != http.StatusBadRequest {
			t.Errorf("%+v: %d %s", bad, code, body)
		}
	}
	code, body := post(t, station, srv.URL+"/v1/factory/robots", protocol.FactoryRobotRequest{Serial: "D83ADD01", Profile: "xle"})
	if code != http.StatusCreated {
		t.Fatalf("%d %s", code, body)
	}
	var fr protocol.FactoryRobot
	json.Unmarshal(body, &fr)
	if fr.RobotID != "xle-d83add01" || !strings.HasPrefix(fr.Token, EnrollmentTokenPrefix) || !strings.Contains(fr.CA, "BEGIN CERTIFICATE") {
		t.Fatalf("answer %+v", fr)
	}
	b, _ := json.Marshal(protocol.EnrollRequest{Token: fr.Token, CSR: string(csrPEM(t, fr.RobotID))})
	resp, err := srv.Client().Post(srv.URL+protocol.EnrollPath, "application/json", bytes.NewReader(b))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("enroll with the factory token: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	code, body = post(t, station, srv.URL+"/v1/factory/robots", protocol.FactoryRobotRequest{Serial: "d83add01", Profile: "xle"})
	if code != http.StatusConflict || !strings.Contains(string(body), "revoke it first") {
		t.Fatalf("second identity for an enrolled board: %d %s", code, body)
	}
	evs, err := st.Events(context.Background(), 0, 100, "xle-d83add01")
	if err != nil {
		t.Fatal(err)
	}
	var actors []string
	for _, e := range evs {
		actors = append(actors, e.Type+"/"+e.Actor)
	}
	if !strings.Contains(strings.Join(actors, " "), store.TypeEnrollmentCreated+"/node:station-1") {
		t.Fatalf("events %v: the enrollment does not name the station", actors)
	}
}

// Station events are stored once even when a batch is sent twice, and a
// device seen but never booted does not become a robot.
func TestFactoryEventsAreIdempotent(t *testing.T) {
	st, ca, srv := factoryServer(t)
	station := nodeClient(t, srv, ca, "station-1")
	now := time.Now().UTC()
	batch := protocol.FactoryEvents{Stream: "q1", Events: []protocol.FactoryEvent{
		{Seq: 1, Type: store.TypeDeviceSeen, Time: now, Data: json.RawMessage(`{"mac":"d8:3a:dd:01:02:03","model":"Raspberry Pi 5"}`)},
		{Seq: 2, Type: store.TypeFactoryStep, Time: now, RobotID: "lekiwi-d83add01", Data: json.RawMessage(`{"step":"identity","status":"waiting"}`)},
	}}
	for i, want := range []protocol.FactoryEventsAccepted{{Stored: 2}, {Duplicates: 2}} {
		code, body := post(t, station, srv.URL+"/v1/factory/events", batch)
		var got protocol.FactoryEventsAccepted
		json.Unmarshal(body, &got)
		if code != 200 || got != want {
			t.Fatalf("send %d: %d %s, want %+v", i+1, code, body, want)
		}
	}
	if _, err := st.Robot(context.Background(), "lekiwi-d83add01"); err == nil {
		t.Fatal("a factory step created a robot in the projection")
	}
	for _, bad := range []protocol.FactoryEvents{
		{Stream: "q1", Events: []protocol.FactoryEvent{{Seq: 3, Type: store.TypeRobotConnected, Time: now, Data: json.RawMessage(`{}`)}}},
		{Stream: "q1", Events: []protocol.FactoryEvent{{Seq: 0, Type: store.TypeDeviceSeen, Time: now, Data: json.RawMessage(`{}`)}}},
		{Stream: "bad stream!", Events: batch.Events},
		{Stream: "q1"},
	} {
		if code, body := post(t, station, srv.URL+"/v1/factory/events", bad); code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", fmt.Sprint(bad), code, body)
		}
	}
}
