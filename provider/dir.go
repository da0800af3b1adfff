package provider

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
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
// applied again; a file that is gone (on two scans in a row, so that an
// editor's save by rename does not delete the provider) deletes the
// provider. A file that does not parse or validate is reported (log,
// metric, GET /v1/providers) and changes nothing: the provider keeps its
// previous state until the file is fixed. While its file exists, a provider
// cannot be changed over HTTP.
//
// Providers should write their file atomically (a temporary file whose name
// starts with '.', renamed over <provider>.json); files starting with '.'
// are never read. A partly written file is reported like a malformed one
// and read again once it changes. Symbolic links are followed.
//
// The directory must exist: a missing or unreadable directory is reported
// and changes nothing (it is never taken for "every file removed", which
// would deregister every file provider of the host).
//
// Dir polls (a stat of each file every Poll) rather than relying on inotify,
// which misses changes on some file systems, behind symbolic links and when
// the directory itself is replaced; a stat of a handful of files per second
// costs nothing.
type Dir struct {
	path string
	m    *Manager
	poll time.Duration
	log  *zap.Logger
	errs prometheus.Counter

	seen    map[string]fileSeen          // by provider name
	applied map[string][sha256.Size]byte // content last handed to the manager, by provider
	skipped map[string]fileSeen          // files reported and ignored, by file name
	scanned bool                         // a first complete scan has run
	dirErr  string                       // why the directory could not be listed
}

// fileSeen is how a file looked when it was last read, what it held and
// what was wrong with it then.
type fileSeen struct {
	mod, ctime time.Time
	size       int64
	ino        uint64
	err        string    // "" if nothing was wrong
	retryAt    time.Time // set when recording failed: read again then
	missing    int       // consecutive scans that did not find it
}

// retryRecord is how long Dir waits before trying again to record a file
// whose state the data directory refused.
const retryRecord = 30 * time.Second

// NewDir returns a Dir over path. path may not be, or be inside, the
// directory of m's own records: those would be read as provider files.
func NewDir(path string, m *Manager, opts DirOptions) (*Dir, error) {
	dir, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("providers directory: %w", err)
	}
	records, err := filepath.Abs(m.store.Dir())
	if err != nil {
		return nil, fmt.Errorf("providers directory: %w", err)
	}
	if rel, err := filepath.Rel(records, dir); err == nil && !strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("the providers directory %s must not be the agent's own records in %s", path, records)
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
			Help: "Problems with the providers directory or a file in it (each version of a file counts once); the providers keep their previous state.",
		}),
		seen:    map[string]fileSeen{},
		applied: map[string][sha256.Size]byte{},
		skipped: map[string]fileSeen{},
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(d.errs)
	}
	return d, nil
}

// Claim marks the providers whose files are in the directory as
// file-managed, without reading the files or calling Consul, so that HTTP
// requests for them are refused from the start, before the first Scan.
func (d *Dir) Claim() {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return // the first Scan reports it
	}
	for _, e := range entries {
		if name, read, valid := providerFile(e.Name()); read && valid {
			d.m.setFile(name, true, "")
		}
	}
}

// providerFile tells what a file name in the directory is: read is false
// for files to skip silently (starting with '.', not ending in .json);
// valid is whether name, the provider, is a valid lower-case name.
func providerFile(base string) (name string, read, valid bool) {
	if strings.HasPrefix(base, ".") || !strings.HasSuffix(base, fileSuffix) {
		return "", false, false
	}
	name = strings.TrimSuffix(base, fileSuffix)
	return name, true, ValidName(name) && name == strings.ToLower(name)
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
// complete Scan also deletes the providers recorded from a file that is
// gone.
func (d *Dir) Scan(ctx context.Context) {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		if err.Error() != d.dirErr {
			d.dirErr = err.Error()
			d.report("", "providers directory: cannot list it; nothing changes until it can be listed", err)
		}
		return
	}
	if d.dirErr != "" {
		d.dirErr = ""
		d.log.Info("providers directory: listed again", zap.String("dir", d.path))
	}
	present := map[string]bool{} // providers whose file is there
	listed := map[string]bool{}  // file names read this scan
	for _, e := range entries {
		base := e.Name()
		name, read, ok := providerFile(base)
		if !read {
			continue
		}
		listed[base] = true
		path := filepath.Join(d.path, base)
		info, err := os.Stat(path) // follows symbolic links
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing (or a dangling link)
		}
		now := stat(info)
		switch {
		case err != nil:
			now.err = err.Error()
		case !info.Mode().IsRegular():
			if info.IsDir() {
				continue
			}
			now.err = "not a regular file"
		}
		if !ok || now.err != "" {
			if !ok {
				now.err = "the name is not <provider>.json with a valid lower-case provider name"
			}
			if prev, seen := d.skipped[base]; !seen || prev.changed(now) || prev.err != now.err {
				d.skipped[base] = now
				d.report(base, "providers directory: ignoring a file: "+now.err, nil)
			}
			if ok {
				present[name] = true // keep the provider's state meanwhile
				d.m.setFile(name, true, now.err)
			}
			continue
		}
		delete(d.skipped, base)
		present[name] = true
		prev, seen := d.seen[name]
		if seen {
			prev.missing = 0
			d.seen[name] = prev
		}
		if seen && !prev.changed(now) && (prev.retryAt.IsZero() || time.Now().Before(prev.retryAt)) {
			continue
		}
		d.apply(ctx, name, path, now, prev)
	}
	for base := range d.skipped {
		if !listed[base] {
			delete(d.skipped, base)
		}
	}
	for name, f := range d.seen {
		if present[name] {
			continue
		}
		if f.missing++; f.missing < 2 {
			d.seen[name] = f
			continue
		}
		d.remove(ctx, name)
	}
	if !d.scanned {
		// Files removed while the agent was not running.
		recorded, err := d.m.List()
		if err != nil {
			d.log.Error("providers directory: list recorded providers", zap.Error(err))
			return
		}
		for _, r := range recorded {
			if r.Source == SourceFile && !r.Deleting && r.Error == "" && !present[r.Provider] {
				d.remove(ctx, r.Provider)
			}
		}
		d.scanned = true
	}
}

// apply reads the file of provider name, whose stat is now (prev is what
// was seen before, if anything), and hands it to the manager.
func (d *Dir) apply(ctx context.Context, name, path string, now, prev fileSeen) {
	data, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return // removed since the listing; the next scans see it gone
	}
	var b *Body
	var sum [sha256.Size]byte
	if err == nil {
		sum = sha256.Sum256(data)
		if last, ok := d.applied[name]; ok && sum == last && prev.err == "" && prev.retryAt.IsZero() {
			d.seen[name] = now // touched, same content: nothing to do
			return
		}
		b, err = parseBytes(data)
	}
	if err != nil {
		now.err = err.Error()
		d.seen[name] = now
		d.m.setFile(name, true, now.err)
		d.report(name+fileSuffix, "providers directory: malformed provider file; the provider keeps its previous state", err)
		return
	}
	err = d.m.put(ctx, name, b, SourceFile, Identity{})
	if err == nil || errors.Is(err, ErrConsul) {
		d.applied[name] = sum
	}
	switch {
	case err == nil:
		d.log.Info("providers directory: applied", zap.String("provider", name), zap.Int("instances", len(b.Instances)))
	case errors.Is(err, ErrConsul):
		// Recorded; the manager retries until it holds.
		d.log.Warn("providers directory: recorded, but the Consul agent failed; retrying", zap.String("provider", name), zap.Error(err))
	default:
		// Not recorded (the data directory failed): try again later.
		now.err, now.retryAt = err.Error(), time.Now().Add(retryRecord)
		if prev.err != now.err {
			d.log.Error("providers directory: could not record the provider's state; trying again every 30s", zap.String("provider", name), zap.Error(err))
		}
	}
	d.seen[name] = now
}

// remove deletes the provider whose file is gone.
func (d *Dir) remove(ctx context.Context, name string) {
	delete(d.seen, name)
	delete(d.applied, name)
	err := d.m.delete(ctx, name, SourceFile, Identity{})
	switch {
	case err == nil:
		d.log.Info("providers directory: file removed; provider deleted", zap.String("provider", name))
	case errors.Is(err, ErrNotFound):
	case errors.Is(err, ErrConsul):
		d.log.Warn("providers directory: file removed; the deletion is recorded, but the Consul agent failed; retrying", zap.String("provider", name), zap.Error(err))
	default:
		d.log.Error("providers directory: file removed, but the deletion could not be recorded; trying again", zap.String("provider", name), zap.Error(err))
		d.seen[name] = fileSeen{err: err.Error(), missing: 1} // deleted again at the next scan
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

// readFile reads a provider file; one over MaxBody bytes is an error, a
// *ValidationError as Parse's.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxBody+1))
	if err == nil && int64(len(data)) > MaxBody {
		err = &ValidationError{Msg: fmt.Sprintf("body larger than %d bytes", MaxBody), Err: ErrTooLarge}
	}
	return data, err
}

func stat(info fs.FileInfo) fileSeen {
	if info == nil {
		return fileSeen{}
	}
	s := fileSeen{mod: info.ModTime(), size: info.Size()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
		s.ctime = time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	return s
}

// changed reports whether the file now differs from f: another inode (a
// rename over it), size, modification or change time.
func (f fileSeen) changed(now fileSeen) bool {
	return f.ino != now.ino || f.size != now.size || !f.mod.Equal(now.mod) || !f.ctime.Equal(now.ctime)
}
