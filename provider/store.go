package provider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
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
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("provider store: %w", err)
	}
	return &Store{dir: dir}, nil
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

// Save records b as the desired state of the provider name, replacing what
// was recorded before. It returns once the new state is durable.
func (s *Store) Save(name string, b *Body) error {
	path, err := s.path(name)
	if err != nil {
		return err
	}
	if b.Instances == nil {
		b = &Body{Instances: []Instance{}} // "instances": [] rather than null
	}
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return fmt.Errorf("provider store: encode %s: %w", name, err)
	}
	data = append(data, '\n')
	if err := writeFileAtomic(path, data); err != nil {
		return fmt.Errorf("provider store: save %s: %w", name, err)
	}
	return nil
}

// writeFileAtomic replaces path with data: temp file in the same directory,
// fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte) (err error) {
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
	if err = f.Chmod(0o644); err != nil {
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
// is recorded the error wraps fs.ErrNotExist. The file is parsed and
// validated like a body from the network, since a provider may have written
// it itself.
func (s *Store) Load(name string) (*Body, error) {
	path, err := s.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("provider store: load %s: %w", name, err)
	}
	defer f.Close()
	b, err := Parse(f, MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("provider store: load %s: %w", path, err)
	}
	return b, nil
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

// List returns the names of the providers with recorded state, sorted.
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
