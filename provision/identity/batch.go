package identity

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/lekiwi/heartbeat/protocol"
)

// Batch file columns, named by the header line in any order.
const (
	ColRobotID     = "robot_id"     // required
	ColHostname    = "hostname"     // optional; default Hostname(profile, robot id)
	ColEnrollToken = "enroll_token" // enroll_token, or cert and key, per row
	ColCert        = "cert"         // robot certificate (PEM) file, relative to the batch file
	ColKey         = "key"          // its private key (PEM) file
	ColCA          = "ca"           // optional fleet CA (PEM) file for this row
	ColNotes       = "notes"        // ignored: for the people who keep the sheet
)

// BatchColumns lists every column a batch file may have.
func BatchColumns() []string {
	return []string{ColRobotID, ColHostname, ColEnrollToken, ColCert, ColKey, ColCA, ColNotes}
}

// MaxTokenLen bounds an enrollment token (control's are 36 characters).
const MaxTokenLen = 256

// Row is one identity of a batch file.
type Row struct {
	Line        int // line in the batch file, for messages
	RobotID     string
	Hostname    string
	EnrollToken string
	Cert, Key   string // file paths as written
	CA          string
}

// ParseBatch reads a batch file: a header line naming the columns, then
// one robot per line; '#' starts a comment line. Every error names the
// line it is on.
func ParseBatch(r io.Reader) ([]Row, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	// Spreadsheets like to start a UTF-8 export with a byte order mark.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	cr := csv.NewReader(bytes.NewReader(data))
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("empty batch file: want a header line such as %q", "robot_id,enroll_token")
	}
	if err != nil {
		return nil, err
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("line 1: column %q appears twice", h)
		}
		known := false
		for _, c := range BatchColumns() {
			known = known || c == h
		}
		if !known {
			return nil, fmt.Errorf("line 1: unknown column %q; the columns are %s", h, strings.Join(BatchColumns(), ", "))
		}
		col[h] = i
	}
	if _, ok := col[ColRobotID]; !ok {
		return nil, fmt.Errorf("line 1: no %s column", ColRobotID)
	}
	_, hasCert := col[ColCert]
	_, hasKey := col[ColKey]
	_, hasToken := col[ColEnrollToken]
	if hasCert != hasKey {
		return nil, fmt.Errorf("line 1: give both %s and %s columns, or neither", ColCert, ColKey)
	}
	if !hasCert && !hasToken {
		return nil, fmt.Errorf("line 1: no %s column and no %s and %s columns: robots would have no way to reach control", ColEnrollToken, ColCert, ColKey)
	}
	field := func(rec []string, name string) string {
		if i, ok := col[name]; ok {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	var rows []Row
	firstLine := map[string]map[string]int{ColRobotID: {}, ColHostname: {}, ColEnrollToken: {}, ColCert: {}, ColKey: {}}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err // a *csv.ParseError names its line
		}
		line, _ := cr.FieldPos(0)
		row := Row{Line: line, RobotID: field(rec, ColRobotID), Hostname: field(rec, ColHostname), EnrollToken: field(rec, ColEnrollToken),
			Cert: field(rec, ColCert), Key: field(rec, ColKey), CA: field(rec, ColCA)}
		if err := checkRow(row); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		for name, v := range map[string]string{ColRobotID: row.RobotID, ColHostname: row.Hostname, ColEnrollToken: row.EnrollToken, ColCert: row.Cert, ColKey: row.Key} {
			if v == "" {
				continue
			}
			if first, dup := firstLine[name][v]; dup {
				if name == ColEnrollToken {
					v = "(secret)" // keep tokens out of messages
				}
				return nil, fmt.Errorf("line %d: %s %s is already on line %d: every robot needs its own", line, name, v, first)
			}
			firstLine[name][v] = line
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, errors.New("batch file has a header but no robots")
	}
	return rows, nil
}

func checkRow(r Row) error {
	if err := protocol.ValidRobotID(r.RobotID); err != nil {
		return err
	}
	if r.Hostname != "" {
		if err := protocol.ValidRobotID(r.Hostname); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
	}
	if (r.Cert == "") != (r.Key == "") {
		return fmt.Errorf("robot %s has only one of %s and %s: give both, or neither", r.RobotID, ColCert, ColKey)
	}
	if r.Cert == "" && r.EnrollToken == "" {
		return fmt.Errorf("robot %s has neither %s nor %s and %s", r.RobotID, ColEnrollToken, ColCert, ColKey)
	}
	if len(r.EnrollToken) > MaxTokenLen {
		return fmt.Errorf("robot %s: enrollment token longer than %d characters", r.RobotID, MaxTokenLen)
	}
	for _, c := range r.EnrollToken {
		if unicode.IsSpace(c) || !unicode.IsPrint(c) {
			return fmt.Errorf("robot %s: enrollment token has a space or control character", r.RobotID)
		}
	}
	return nil
}

// checkRobotCert checks that certPEM and keyPEM belong together, name
// robotID (the lekiwi://robot/<id> URI control puts in robot
// certificates) and are not expired at now.
func checkRobotCert(certPEM, keyPEM []byte, robotID string, now time.Time) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("certificate and key: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if len(cert.URIs) != 1 {
		return fmt.Errorf("certificate %q is not a robot certificate (it has %d URI names, want one lekiwi://robot/<id>)", cert.Subject.CommonName, len(cert.URIs))
	}
	id, err := protocol.RobotIDFromURI(cert.URIs[0])
	if err != nil {
		return fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
	}
	if id != robotID {
		return fmt.Errorf("certificate names robot %s, not %s", id, robotID)
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("certificate expired on %s", cert.NotAfter.UTC().Format("2006-01-02"))
	}
	return nil
}
