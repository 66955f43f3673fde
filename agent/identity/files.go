package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/lekiwi/heartbeat/image/layout"
)

// File and directory names. They are part of the image's disk contract
// (image/layout): customize writes a robot's identity into the image
// before its first boot, and Load must find it there.
const (
	// DirName is the identity directory under the agent's state directory.
	DirName  = layout.IdentityDir
	KeyFile  = layout.IdentityKeyFile
	CertFile = layout.IdentityCertFile
	CAFile   = layout.IdentityCAFile
	// StagedSuffix marks a key or certificate written and synced but not yet
	// switched to (key.pem.new, cert.pem.new).
	StagedSuffix = ".new"
)

const tempInfix = ".tmp-"

// Load reads the identity saved in dir. Errors wrap ErrNotFound when there
// is no identity at all (enroll), ErrCorrupt when a file is missing or
// unreadable, ErrMismatch when key, certificate and CA do not belong
// together; the message names the file and what to do. An expired
// certificate still loads (check Certificate().NotAfter).
//
// Load also finishes a key/certificate switch a power cut interrupted
// (staged *.new files) and removes leftover temporary files, so it writes
// to dir when there is something to repair.
func Load(dir string) (*Identity, error) {
	read := func(name string) ([]byte, bool, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("robot identity: %w", err)
		}
		return b, true, nil
	}
	type file struct {
		b  []byte
		ok bool
	}
	files := map[string]*file{}
	for _, name := range []string{CAFile, KeyFile, CertFile, KeyFile + StagedSuffix, CertFile + StagedSuffix} {
		b, ok, err := read(name)
		if err != nil {
			return nil, err
		}
		files[name] = &file{b, ok}
	}
	key, cert := files[KeyFile], files[CertFile]
	nkey, ncert := files[KeyFile+StagedSuffix], files[CertFile+StagedSuffix]
	ca := files[CAFile]
	reenroll := fmt.Sprintf("move %s away and enroll again with a new token (control enroll create --robot-id <id>)", dir)

	if !key.ok && !cert.ok && !(nkey.ok && ncert.ok) {
		return nil, fmt.Errorf("%w in %s (no %s and %s): the robot has to enroll (set enrollment_token_file and ca_file)", ErrNotFound, dir, KeyFile, CertFile)
	}
	if !ca.ok {
		return nil, fmt.Errorf("robot identity in %s: %w: %s is missing: copy the fleet CA there or %s", dir, ErrCorrupt, CAFile, reenroll)
	}

	// Newest complete pair first: both staged (switch not started), key
	// switched but not the certificate, then the current pair.
	type candidate struct {
		key, cert         []byte
		keyNew, certNew   bool
		keyName, certName string
	}
	var cands []candidate
	if nkey.ok && ncert.ok {
		cands = append(cands, candidate{nkey.b, ncert.b, true, true, KeyFile + StagedSuffix, CertFile + StagedSuffix})
	}
	if key.ok && ncert.ok {
		cands = append(cands, candidate{key.b, ncert.b, false, true, KeyFile, CertFile + StagedSuffix})
	}
	if key.ok && cert.ok {
		cands = append(cands, candidate{key.b, cert.b, false, false, KeyFile, CertFile})
	}
	var lastErr error
	for _, c := range cands {
		id, err := fromPEM(c.key, c.cert, ca.b)
		if err != nil {
			lastErr = fmt.Errorf("robot identity in %s (%s, %s, %s): %w: %s", dir, c.keyName, c.certName, CAFile, err, reenroll)
			continue
		}
		if err := finishSwitch(dir, c.keyNew, c.certNew); err != nil {
			return nil, err
		}
		id.dir = dir
		return id, nil
	}
	switch {
	case !key.ok && cert.ok:
		return nil, fmt.Errorf("robot identity in %s: %w: %s is missing but %s exists: %s", dir, ErrCorrupt, KeyFile, CertFile, reenroll)
	case !cert.ok && lastErr == nil:
		return nil, fmt.Errorf("robot identity in %s: %w: %s is missing but %s exists: %s", dir, ErrCorrupt, CertFile, KeyFile, reenroll)
	}
	return nil, lastErr
}

// finishSwitch renames the staged files Load chose into place (key first),
// removes staged files it did not choose and temporary files, and syncs
// the directory if anything changed.
func finishSwitch(dir string, keyNew, certNew bool) error {
	changed := false
	if keyNew {
		if err := os.Rename(filepath.Join(dir, KeyFile+StagedSuffix), filepath.Join(dir, KeyFile)); err != nil {
			return fmt.Errorf("finish switching to the renewed key: %w", err)
		}
		changed = true
	}
	if certNew {
		if err := os.Rename(filepath.Join(dir, CertFile+StagedSuffix), filepath.Join(dir, CertFile)); err != nil {
			return fmt.Errorf("finish switching to the renewed certificate: %w", err)
		}
		changed = true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("robot identity: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasSuffix(n, StagedSuffix) || (strings.HasPrefix(n, ".") && strings.Contains(n, tempInfix)) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("remove leftover %s: %w", n, err)
			}
			changed = true
		}
	}
	if changed {
		return syncDir(dir)
	}
	return nil
}

// Save writes the identity to dir (created 0700 if missing): ca.pem, then
// key.pem and cert.pem switched together. Later renewals are saved there.
func (i *Identity) Save(dir string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save robot identity: %w", err)
	}
	if err := writeFileAtomic(dir, CAFile, i.caPEM, 0o644); err != nil {
		return fmt.Errorf("save robot identity: %w", err)
	}
	if err := savePair(dir, i.keyPEM, i.certPEM); err != nil {
		return fmt.Errorf("save robot identity: %w", err)
	}
	i.dir = dir
	return nil
}

// savePair switches key.pem and cert.pem to a new pair so that a crash at
// any point leaves a pair Load can use: both are staged durably first, then
// renamed over the old ones, key first.
func savePair(dir string, keyPEM, certPEM []byte) error {
	if err := writeFileAtomic(dir, KeyFile+StagedSuffix, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(dir, CertFile+StagedSuffix, certPEM, 0o600); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	for _, name := range []string{KeyFile, CertFile} {
		if err := os.Rename(filepath.Join(dir, name+StagedSuffix), filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("switch to the new %s: %w", name, err)
		}
	}
	return syncDir(dir)
}

// writeFileAtomic replaces dir/name with data: temporary file in the same
// directory, fsync, rename. The caller syncs the directory.
func writeFileAtomic(dir, name string, data []byte, mode fs.FileMode) (err error) {
	f, err := os.CreateTemp(dir, "."+name+tempInfix+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
