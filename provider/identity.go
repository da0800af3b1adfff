package provider

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
)

// Identity is who writes a provider's state: a local user, known by the
// uid the kernel gives for the providers socket's peer, or the name of a
// bearer token from the tokens file. A provider's recorded state keeps its
// writer's Owner; only that writer, or root, may change or delete it.
type Identity struct {
	// Owner is "uid:<n>" or "token:<name>".
	Owner string
	// Root may change any provider.
	Root bool
}

// UID is the identity of the local user uid.
func UID(uid uint32) Identity {
	return Identity{Owner: "uid:" + strconv.FormatUint(uint64(uid), 10), Root: uid == 0}
}

// Tokens are the bearer tokens that may write providers over TCP, read
// from the tokens file (-providers.tokens): one per line,
//
//	<name> <token> <provider pattern>[,<pattern>...]
//
// with shell-glob patterns of the provider names the token may write ("*"
// for any); blank lines and lines starting with '#' are ignored. The name
// is the token's identity (Identity.Owner "token:<name>"), so a token can
// be replaced without its providers changing hands.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	name     string
	sum      [sha256.Size]byte // of the token: compared in constant time
	patterns []string
}

// minTokenLen is the shortest token accepted: 128 bits in hex.
const minTokenLen = 32

// LoadTokens reads a tokens file. The file must not be readable by others
// than its owner and group: it holds secrets.
func LoadTokens(file string) (*Tokens, error) {
	f, err := OpenSecret(file)
	if err != nil {
		return nil, fmt.Errorf("providers tokens: %w", err)
	}
	defer f.Close()
	t, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("providers tokens: %s: %w", file, err)
	}
	return t, nil
}

// OpenSecret opens a file that holds secrets (a tokens file, a Consul
// token), refusing one that every user may read or write.
func OpenSecret(file string) (*os.File, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Mode().Perm()&0o007 != 0 {
		f.Close()
		return nil, fmt.Errorf("%s is readable or writable by every user (mode %v); chmod o-rwx it", file, st.Mode().Perm())
	}
	return f, nil
}

// ParseTokens reads the tokens file's format (see Tokens).
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	names := map[string]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("line %d: want <name> <token> <provider patterns>, got %d fields", n, len(f))
		}
		name, token := f[0], f[1]
		if _, err := CheckName(name); err != nil {
			return nil, fmt.Errorf("line %d: token name: %v", n, err)
		}
		if names[name] {
			return nil, fmt.Errorf("line %d: token name %q used twice", n, name)
		}
		names[name] = true
		if len(token) < minTokenLen {
			return nil, fmt.Errorf("line %d: token %q is shorter than %d characters", n, name, minTokenLen)
		}
		e := tokenEntry{name: name, sum: sha256.Sum256([]byte(token))}
		for _, p := range strings.Split(f[2], ",") {
			if _, err := path.Match(p, ""); err != nil || p == "" {
				return nil, fmt.Errorf("line %d: provider pattern %q is not a valid shell glob", n, p)
			}
			e.patterns = append(e.patterns, p)
		}
		t.entries = append(t.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return t, nil
}

// Lookup returns the identity of a bearer token and whether it may write
// the provider name. ok is false for a token not in the file.
func (t *Tokens) Lookup(token, name string) (who Identity, allowed, ok bool) {
	if t == nil {
		return Identity{}, false, false
	}
	sum := sha256.Sum256([]byte(token))
	var found *tokenEntry
	for i := range t.entries {
		// Every entry is compared, in constant time: how long the lookup
		// takes tells nothing of which one matched or how closely.
		if subtle.ConstantTimeCompare(sum[:], t.entries[i].sum[:]) == 1 {
			found = &t.entries[i]
		}
	}
	if found == nil {
		return Identity{}, false, false
	}
	for _, p := range found.patterns {
		if m, _ := path.Match(p, name); m {
			allowed = true
		}
	}
	return Identity{Owner: "token:" + found.name}, allowed, true
}

// Len returns the number of tokens.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.entries)
}
