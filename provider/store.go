package provider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// MaxFileSize is the most bytes Store.Load reads of one provider's file.
const MaxFileSize = 64 << 20

// fileSuffix ends the name of every provider's file.
const fileSuffix = ".json"

// Store keeps each provider's desired state, the last body accepted for it,
// durably in a directory: one file <name>.json per provider, in the same
// JSON shape as the body. Writes go to a temporary file (whose name starts
// with '.', so Load and List never see it) that is synced and then renamed
// over the old file, and the directory is synced after the rename and after
// a removal, so a crash leaves either the old or the new state, never a
// mixture. A Store does not serialise calls for the same name; its caller
// does.
type Store struct {
	dir string
}

// NewStore returns a Store keeping its files in dir, creating dir if needed.
// The directory is made the agent's alone (0700), and the temporary files
// of writes a crash cut short are removed.
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("provider store: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("provider store: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("provider store: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-") && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("provider store: remove a crashed write's %s: %w", e.Name(), err)
			}
		}
	}
	return &Store{dir: dir}, nil
}

// SetAside renames the provider's record out of the store's sight, to
// <name>.json.unreadable-<unix time>, for inspection; it returns the new
// path.
func (s *Store) SetAside(name string) (string, error) {
	path, err := s.path(name)
	if err != nil {
		return "", err
	}
	aside := fmt.Sprintf("%s.unreadable-%d", path, time.Now().Unix())
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("provider store: set %s aside: %w", name, err)
	}
	return aside, syncDir(s.dir)
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(name string) (string, error) {
	n, err := CheckName(name)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.dir, n+fileSuffix), nil
}

// Sources of a recorded state.
const (
	// SourceHTTP marks a state accepted through PUT /v1/providers/<name>.
	SourceHTTP = "http"
	// SourceFile marks a state read from <name>.json in the providers
	// directory.
	SourceFile = "file"
)

// Record is what the store keeps for one provider: its desired state, where
// that state came from, and whether the provider was deleted. A deleted
// provider's record (a tombstone, with no instances) stays until its
// registrations are gone from the Consul agent, so that a deletion that
// Consul did not accept is still carried out after a restart.
type Record struct {
	Body    *Body
	Source  string // SourceHTTP or SourceFile
	Deleted bool
	// Owner is who wrote a state accepted over HTTP (Identity.Owner):
	// only they, or root, may change or delete it. Empty for a file's
	// state and for records kept before owners were.
	Owner string
}

// recordFile is a Record on disk: the body's shape, plus "source" when not
// SourceHTTP, "owner" for a state accepted over HTTP, and "deleted" for a
// tombstone.
type recordFile struct {
	Source    string     `json:"source,omitempty"`
	Owner     string     `json:"owner,omitempty"`
	Deleted   bool       `json:"deleted,omitempty"`
	Instances []Instance `json:"instances"`
}

// Save records b as the desired state of the provider name, accepted over
// HTTP, replacing what was recorded before. It returns once the new state is
// durable.
func (s *Store) Save(name string, b *Body) error {
	return s.SaveRecord(name, Record{Body: b, Source: SourceHTTP})
}

// SaveRecord records r for the provider name, replacing what was recorded
// before. It returns once the new record is durable.
func (s *Store) SaveRecord(name string, r Record) error {
	path, err := s.path(name)
	if err != nil {
		return err
	}
	f := recordFile{Deleted: r.Deleted, Owner: r.Owner, Instances: []Instance{}} // "instances": [] rather than null
	if r.Source != SourceHTTP {
		f.Source = r.Source
	}
	if r.Body != nil && r.Body.Instances != nil && !r.Deleted {
		f.Instances = r.Body.Instances
	}
	data, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return fmt.Errorf("provider store: encode %s: %w", name, err)
	}
	data = append(data, '\n')
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("provider store: save %s: %w", name, err)
	}
	return nil
}

// WriteFileAtomic replaces path with data: a temporary file in the same
// directory (its name starts with '.', so neither a Store nor the providers
// directory reads it), fsync, rename, fsync of the directory. A reader sees
// the old file or the new one, never a part; providers written in Go can
// use it for their <provider>.json.
func WriteFileAtomic(path string, data []byte) (err error) {
	return writeFileAtomic(path, data, 0o644)
}

// writeFileAtomic is WriteFileAtomic with the file's mode.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err = f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	if dir == "" {
		dir = "."
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Load returns the recorded desired state of the provider name. When none
// is recorded, or the provider was deleted, the error wraps fs.ErrNotExist.
func (s *Store) Load(name string) (*Body, error) {
	r, err := s.LoadRecord(name)
	if err != nil {
		return nil, err
	}
	if r.Deleted {
		return nil, fmt.Errorf("provider store: load %s: deleted: %w", name, fs.ErrNotExist)
	}
	return r.Body, nil
}

// LoadRecord returns the record of the provider name, tombstones included.
// When there is none the error wraps fs.ErrNotExist. The instances are
// parsed and validated like a body from the network, since the file may
// have been edited by hand.
func (s *Store) LoadRecord(name string) (Record, error) {
	path, err := s.path(name)
	if err != nil {
		return Record{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return Record{}, fmt.Errorf("provider store: load %s: %w", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return Record{}, fmt.Errorf("provider store: load %s: %w", path, err)
	}
	// The envelope first, then the instances as a body's, decoded strictly
	// with errors naming the bad field.
	var env struct {
		Source    string             `json:"source"`
		Owner     string             `json:"owner"`
		Deleted   bool               `json:"deleted"`
		Instances *[]json.RawMessage `json:"instances"`
	}
	if int64(len(data)) > MaxFileSize {
		return Record{}, fmt.Errorf("provider store: load %s: larger than %d bytes", path, MaxFileSize)
	}
	if err := decodeStrict(data, &env, ""); err != nil {
		return Record{}, fmt.Errorf("provider store: load %s: %w", path, err)
	}
	r := Record{Source: env.Source, Deleted: env.Deleted, Owner: env.Owner}
	switch r.Source {
	case "":
		r.Source = SourceHTTP
	case SourceHTTP, SourceFile:
	default:
		return Record{}, fmt.Errorf("provider store: load %s: unknown source %q", path, r.Source)
	}
	if r.Body, err = parseInstances(env.Instances); err != nil {
		return Record{}, fmt.Errorf("provider store: load %s: %w", path, err)
	}
	return r, nil
}

// Delete removes the recorded state of the provider name, durably. Deleting
// a provider with no recorded state is not an error.
func (s *Store) Delete(name string) error {
	path, err := s.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("provider store: delete %s: %w", name, err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("provider store: delete %s: %w", name, err)
	}
	return nil
}

// List returns the names of the providers with a record (tombstones
// included), sorted.
// Files that are not <valid name>.json (temporary files among them) are
// skipped.
func (s *Store) List() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("provider store: list: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		name, ok := strings.CutSuffix(e.Name(), fileSuffix)
		if !ok || !ValidName(name) || name != strings.ToLower(name) {
			continue
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}
