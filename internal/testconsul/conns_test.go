package testconsul

import (
	"net"
	"testing"
)

// TestConnectionsTo counts connections it opens itself to a listener of
// its own, as the kernel reports them.
func TestConnectionsTo(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	if n, err := connectionsTo(port); err != nil || n != 0 {
		t.Fatalf("before: %d, %v; want 0", n, err)
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	if n, err := connectionsTo(port); err != nil || n != 3 {
		t.Fatalf("with 3 open: %d, %v; want 3", n, err)
	}
	conns[0].Close()
	if n, err := connectionsTo(port); err != nil || n != 2 {
		t.Fatalf("after closing one: %d, %v; want 2", n, err)
	}
}
