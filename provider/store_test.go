package provider

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func sampleBody(ports ...int) *Body {
	b := &Body{Instances: []Instance{}}
	for _, p := range ports {
		b.Instances = append(b.Instances, Instance{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: p,
			Check: &Check{Type: CheckTCP, Interval: "5s"}})
	}
	return b
}

func TestStoreRoundTrip(t *testing.T) {
	s, err := NewStore(filepath.Join(t.TempDir(), "providers"))
	if err != nil {
		t.Fatal(err)
	}
	if names, err := s.List(); err != nil || len(names) != 0 {
		t.Fatalf("List of a new store = %v, %v", names, err)
	}
	if _, err := s.Load("bazooka"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of nothing = %v, want fs.ErrNotExist", err)
	}

	want := sampleBody(8000, 8001)
	if err := s.Save("Bazooka", want); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("other", sampleBody()); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load("bazooka")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load = %+v, want %+v", got, want)
	}
	if got, err := s.Load("other"); err != nil || got.Instances == nil || len(got.Instances) != 0 {
		t.Errorf("Load(other) = %+v, %v, want no instances", got, err)
	}
	if names, err := s.List(); err != nil || !reflect.DeepEqual(names, []string{"bazooka", "other"}) {
		t.Errorf("List = %v, %v", names, err)
	}

	// Replacing: the new state wins, no temporary file is left behind.
	want = sampleBody(9000)
	if err := s.Save("bazooka", want); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load("bazooka"); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Load after replacing = %+v, %v", got, err)
	}
	entries, _ := os.ReadDir(s.Dir())
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want 2: %v", len(entries), entries)
	}

	if err := s.Delete("bazooka"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("bazooka"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load after Delete = %v, want fs.ErrNotExist", err)
	}
	if err := s.Delete("bazooka"); err != nil {
		t.Errorf("second Delete = %v, want nil", err)
	}
	if names, err := s.List(); err != nil || !reflect.DeepEqual(names, []string{"other"}) {
		t.Errorf("List after Delete = %v, %v", names, err)
	}
}

// A crash between writing the temporary file and renaming it leaves the old
// state in place and the half-written file invisible.
func TestStoreIgnoresLeftovers(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	want := sampleBody(8000)
	if err := s.Save("bazooka", want); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		".bazooka.json.tmp-123": `{"instances": [{"serv`, // a crashed Save
		".fresh.json.tmp-456":   `{"instances": []}`,     // a crashed first Save
		"notes.txt":             "hello",
		"Bad.Name.json":         `{"instances": []}`,
	} {
		if err := os.WriteFile(filepath.Join(s.Dir(), name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(s.Dir(), "dir.json"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load("bazooka"); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Load = %+v, %v, want the saved state", got, err)
	}
	if names, err := s.List(); err != nil || !reflect.DeepEqual(names, []string{"bazooka"}) {
		t.Errorf("List = %v, %v, want [bazooka]", names, err)
	}
}

func TestStoreRejects(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var ve *ValidationError
	for _, name := range []string{"", "../x", "a/b", ".hidden"} {
		if err := s.Save(name, sampleBody()); !errors.As(err, &ve) {
			t.Errorf("Save(%q) = %v, want a ValidationError", name, err)
		}
		if _, err := s.Load(name); !errors.As(err, &ve) {
			t.Errorf("Load(%q) = %v, want a ValidationError", name, err)
		}
		if err := s.Delete(name); !errors.As(err, &ve) {
			t.Errorf("Delete(%q) = %v, want a ValidationError", name, err)
		}
	}
	// A file a provider wrote by hand is validated on Load.
	if err := os.WriteFile(filepath.Join(s.Dir(), "hand.json"), []byte(`{"instances": [{"port": 1}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("hand"); !errors.As(err, &ve) || ve.Field != "instances[0].service" {
		t.Errorf("Load of an invalid file = %v, want a ValidationError on instances[0].service", err)
	}
}

// TestStoreRecords: the source and tombstones survive a round trip; a
// record accepted over HTTP is exactly a body on disk; a tombstone is not
// loadable as a state but is listed, so a restart still carries it out.
func TestStoreRecords(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRecord("fromfile", Record{Body: sampleBody(8000), Source: SourceFile}); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRecord("gone", Record{Source: SourceHTTP, Deleted: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("plain", sampleBody(9000)); err != nil {
		t.Fatal(err)
	}
	r, err := s.LoadRecord("fromfile")
	if err != nil || r.Source != SourceFile || r.Deleted || !reflect.DeepEqual(r.Body, sampleBody(8000)) {
		t.Errorf("file record = %+v, %v", r, err)
	}
	r, err = s.LoadRecord("gone")
	if err != nil || !r.Deleted || len(r.Body.Instances) != 0 {
		t.Errorf("tombstone = %+v, %v", r, err)
	}
	if _, err := s.Load("gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a tombstone = %v, want fs.ErrNotExist", err)
	}
	if names, err := s.List(); err != nil || !reflect.DeepEqual(names, []string{"fromfile", "gone", "plain"}) {
		t.Errorf("List = %v, %v", names, err)
	}
	// An HTTP record on disk is the body itself, readable by Parse.
	f, err := os.Open(filepath.Join(s.Dir(), "plain.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b, err := Parse(f, MaxBody); err != nil || !reflect.DeepEqual(b, sampleBody(9000)) {
		t.Errorf("plain.json parsed as a body: %+v, %v", b, err)
	}
	for name, content := range map[string]string{
		"badsource": `{"source": "ftp", "instances": []}`,
		"noinst":    `{"source": "file"}`,
		"unknown":   `{"instances": [], "color": "red"}`,
	} {
		if err := os.WriteFile(filepath.Join(s.Dir(), name+".json"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := s.LoadRecord(name); err == nil {
			t.Errorf("LoadRecord(%s) of %s: no error", name, content)
		}
	}
}
