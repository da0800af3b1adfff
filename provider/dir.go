package provider

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// DefaultDirPoll is how often a Dir looks for changed files when
// DirOptions.Poll is zero.
const DefaultDirPoll = time.Second

// DirOptions configure a Dir.
type DirOptions struct {
	// Poll is how often the directory is listed for changes.
	Poll time.Duration
	// Registerer, if not nil, receives the Dir's metrics.
	Registerer prometheus.Registerer
	Log        *zap.Logger
}

// Dir applies the providers directory: each file <provider>.json in it, of
// the same shape as a PUT body, is that provider's desired state, handed to
// the Manager like a PUT (recorded, then applied). A file that changes is
// applied again; a file that is removed deletes the provider. A file that
// does not parse or validate is reported (log, metric, GET /v1/providers)
// and changes nothing: the provider keeps its previous state until the file
// is fixed. While its file exists, a provider cannot be changed over HTTP.
//
// Providers should write their file atomically (a temporary file whose name
// starts with '.', renamed over <provider>.json); files starting with '.'
// are never read. A partly written file is reported like a malformed one
// and read again once it changes.
//
// Dir polls (stat of each file every Poll) rather than relying on inotify,
// which misses changes on some file systems and when the directory itself is
// replaced; a stat of a handful of files per second costs nothing.
type Dir struct {
	path string
	m    *Manager
	poll time.Duration
	log  *zap.Logger
	errs prometheus.Counter

	seen    map[string]fileSeen // by provider name
	skipped map[string]fileSeen // files that are not <valid name>.json
	scanned bool                // a first scan has run
	dirErr  string              // why the directory could not be listed
}

// fileSeen is how a file looked when it was last read, and what was wrong
// with it then ("" if nothing).
type fileSeen struct {
	mod  time.Time
	size int64
	ino  uint64
	err  string
}

// NewDir returns a Dir over path, creating the directory if needed.
func NewDir(path string, m *Manager, opts DirOptions) (*Dir, error) {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, fmt.Errorf("providers directory: %w", err)
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultDirPoll
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	d := &Dir{
		path: path, m: m, poll: opts.Poll, log: opts.Log,
		errs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_provider_file_errors_total",
			Help: "Files in the providers directory found malformed or unreadable (each version of a file counts once); the provider keeps its previous state.",
		}),
		seen:    map[string]fileSeen{},
		skipped: map[string]fileSeen{},
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(d.errs)
	}
	return d, nil
}

// Run scans the directory every Poll until ctx ends, starting at once
// unless Scan was called before.
func (d *Dir) Run(ctx context.Context) {
	t := time.NewTicker(d.poll)
	defer t.Stop()
	if !d.scanned {
		d.Scan(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.Scan(ctx)
	}
}

// Scan applies what changed in the directory since the last Scan. The first
// Scan also deletes the providers recorded from a file that is gone.
func (d *Dir) Scan(ctx context.Context) {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		// Never read a missing or unreadable directory as "every file
		// removed": that would deregister every file provider.
		if err.Error() != d.dirErr {
			d.dirErr = err.Error()
			d.report("", "providers directory: cannot list it; nothing changed", err)
		}
		return
	}
	d.dirErr = ""
	present := map[string]bool{}
	for _, e := range entries {
		base := e.Name()
		if strings.HasPrefix(base, ".") || !strings.HasSuffix(base, fileSuffix) || e.IsDir() {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing
		}
		now := stat(info)
		if err != nil {
			now.err = err.Error()
		}
		name := strings.TrimSuffix(base, fileSuffix)
		if !ValidName(name) || name != strings.ToLower(name) {
			if prev, ok := d.skipped[base]; !ok || prev.changed(now) {
				d.skipped[base] = now
				d.report(base, "providers directory: ignoring a file whose name is not <provider>.json with a valid lower-case provider name", nil)
			}
			continue
		}
		present[name] = true
		if prev, ok := d.seen[name]; ok && !prev.changed(now) {
			continue
		}
		d.apply(ctx, name, filepath.Join(d.path, base), now)
	}
	for base := range d.skipped {
		if _, err := os.Lstat(filepath.Join(d.path, base)); errors.Is(err, fs.ErrNotExist) {
			delete(d.skipped, base)
		}
	}
	for name := range d.seen {
		if !present[name] {
			d.remove(ctx, name)
		}
	}
	if !d.scanned {
		d.scanned = true
		// Files removed while the agent was not running.
		names, err := d.m.store.List()
		if err != nil {
			d.log.Error("providers directory: list recorded providers", zap.Error(err))
			return
		}
		for _, name := range names {
			if r, err := d.m.store.LoadRecord(name); err == nil && r.Source == SourceFile && !r.Deleted && !present[name] {
				d.remove(ctx, name)
			}
		}
	}
}

// apply reads the file of provider name, whose stat is now, and hands it to
// the manager.
func (d *Dir) apply(ctx context.Context, name, path string, now fileSeen) {
	b, err := readBody(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return // removed since the listing; the next scan sees it gone
		}
		now.err = err.Error()
		d.seen[name] = now
		d.m.setFile(name, true, now.err)
		d.report(name+fileSuffix, "providers directory: malformed provider file; the provider keeps its previous state", err)
		return
	}
	d.m.setFile(name, true, "")
	err = d.m.put(ctx, name, b, SourceFile)
	switch {
	case err == nil:
		d.log.Info("providers directory: applied", zap.String("provider", name), zap.Int("instances", len(b.Instances)))
	case errors.Is(err, ErrConsul):
		// Recorded; the manager retries until it holds.
		d.log.Warn("providers directory: recorded, but the Consul agent failed; retrying", zap.String("provider", name), zap.Error(err))
	default:
		// Not recorded (the data directory failed): try again next scan.
		d.log.Error("providers directory: could not record the provider's state", zap.String("provider", name), zap.Error(err))
		return
	}
	d.seen[name] = now
}

// remove deletes the provider whose file is gone.
func (d *Dir) remove(ctx context.Context, name string) {
	delete(d.seen, name)
	d.m.setFile(name, false, "")
	err := d.m.delete(ctx, name, SourceFile)
	switch {
	case err == nil, errors.Is(err, ErrNotFound):
		d.log.Info("providers directory: file removed; provider deleted", zap.String("provider", name))
	case errors.Is(err, ErrConsul):
		d.log.Warn("providers directory: file removed; the deletion is recorded, but the Consul agent failed; retrying", zap.String("provider", name), zap.Error(err))
	default:
		d.log.Error("providers directory: file removed, but the deletion could not be recorded", zap.String("provider", name), zap.Error(err))
		d.seen[name] = fileSeen{err: err.Error()} // try again next scan
	}
}

// report counts and logs a problem with the directory or one of its files.
func (d *Dir) report(file, msg string, err error) {
	d.errs.Inc()
	fields := []zap.Field{zap.String("dir", d.path)}
	if file != "" {
		fields = append(fields, zap.String("file", file))
	}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	d.log.Error(msg, fields...)
}

// readBody reads and parses a provider file.
func readBody(path string) (*Body, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f, MaxBody)
}

func stat(info fs.FileInfo) fileSeen {
	if info == nil {
		return fileSeen{}
	}
	s := fileSeen{mod: info.ModTime(), size: info.Size()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

// changed reports whether the file now differs from f: another inode (a
// rename over it), size or modification time.
func (f fileSeen) changed(now fileSeen) bool {
	return f.ino != now.ino || f.size != now.size || !f.mod.Equal(now.mod)
}
