package testconsul

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// moduleLine is the first line of the repository's go.mod; it identifies the
// repository root (nested modules such as tools/consul have other names).
const moduleLine = "module github.com/rugby110/glimpse"

// Bin returns the path of the consul binary the tests run: $CONSUL_BIN when
// it is set (a path, or a name looked up in $PATH), otherwise bin/consul in
// the repository root (see [RepoRoot]). It fails when that file is missing or
// not executable.
func Bin() (string, error) {
	if env := os.Getenv("CONSUL_BIN"); env != "" {
		p, err := exec.LookPath(env)
		if err != nil {
			return "", fmt.Errorf("consul binary not found at %s (from CONSUL_BIN): %v", env, err)
		}
		return filepath.Abs(p)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "bin", "consul")
	fi, err := os.Stat(p)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("consul binary not found at %s: run `make consul` or set CONSUL_BIN", p)
	}
	return p, nil
}

// RepoRoot returns the repository root: the nearest directory, starting from
// the working directory and walking up, that holds a go.mod whose first line
// is "module github.com/rugby110/glimpse".
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		ok, err := isRepoRoot(dir)
		if err != nil {
			return "", err
		}
		if ok {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod starting with %q in %s or any parent directory", moduleLine, wd)
		}
	}
}

// isRepoRoot reports whether dir/go.mod exists and its first line is
// moduleLine.
func isRepoRoot(dir string) (bool, error) {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return false, sc.Err()
	}
	return strings.TrimSpace(sc.Text()) == moduleLine, nil
}
