package pki

import (
	"bytes"
	"encoding/pem"
	"testing"
)

// FuzzParseCSR: ParseCSR reads bytes a robot sends over the network, so it
// must never panic, and whatever it accepts must be a self-signed request
// with an accepted key that parses the same way again.
func FuzzParseCSR(f *testing.F) {
	for _, kind := range []string{"p256", "p384", "ed25519"} {
		f.Add(newCSR(f, newKey(f, kind), nil))
	}
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		csr, err := ParseCSR(in)
		if err != nil {
			if csr != nil {
				t.Fatal("ParseCSR returned a CSR with an error")
			}
			return
		}
		if err := checkCSRKey(csr); err != nil {
			t.Fatalf("accepted a CSR with a refused key: %v", err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature fails: %v", err)
		}
		again, err := ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
		if err != nil || !bytes.Equal(again.Raw, csr.Raw) {
			t.Fatalf("re-encoded CSR does not parse the same: %v", err)
		}
	})
}
