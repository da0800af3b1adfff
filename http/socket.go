package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The providers socket: a Unix socket serving the same API as the TCP
// listener, where the kernel tells who is calling (SO_PEERCRED), so that a
// provider's writes are made as its local user, without a secret to keep.

type peerKey struct{}

// peer is the process at the other end of a socket connection, as the
// kernel saw it when it connected.
type peer struct {
	uid, gid uint32
	pid      int32
}

// peerOf returns the peer of a request that came through the providers
// socket.
func peerOf(ctx context.Context) (peer, bool) {
	p, ok := ctx.Value(peerKey{}).(peer)
	return p, ok
}

// withPeer is the socket server's ConnContext: it reads the peer's
// credentials once per connection.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		c = lc.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	cerr := raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cerr != nil || err != nil || cred == nil {
		return ctx // no identity: the request can read, not write
	}
	return context.WithValue(ctx, peerKey{}, peer{uid: cred.Uid, gid: cred.Gid, pid: cred.Pid})
}

// listenSocket binds the providers socket at path, mode 0660, in group
// (a name or a number; empty: the agent's own group). A socket left by an
// agent that died is replaced; any other file there is an error.
func listenSocket(path, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, err
		}
		gid = g
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("providers socket: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("providers socket: %s exists and is not a socket", path)
		}
		// Another agent still serving it would answer: never take its place.
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("providers socket: %s is served by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("providers socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("providers socket: %w", err)
	}
	// Until the chmod below, the socket has the mode the umask gives
	// (0755 with the usual 022): connecting needs write permission, so
	// only the agent's user can meanwhile, and a peer only ever acts as
	// its own uid.
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("providers socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if gid >= 0 && fileGroup(path) != gid { // chown only when needed: a unit's filter may forbid it
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("providers socket: group %s: %w", group, err)
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("providers socket: %w", err)
	}
	return ln, nil
}

func lookupGroup(group string) (int, error) {
	if n, err := strconv.Atoi(group); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("providers socket: group %q: %w", group, err)
	}
	return strconv.Atoi(g.Gid)
}

// fileGroup returns the group of a file, -1 when it cannot say.
func fileGroup(path string) int {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Gid)
	}
	return -1
}
