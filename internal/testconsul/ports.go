package testconsul

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

// handedOut holds every port number FreePort returned in this process, so
// that two agents of one test binary never get the same number even when the
// first has not bound it yet. Port numbers are never given back: a restarted
// agent keeps its own.
var (
	handedOutMu sync.Mutex
	handedOut   = map[int]bool{}
)

// FreePort returns a port number that is free on ip for TCP and, when udp is
// set, for UDP too. It asks the kernel for a free TCP port (listen on port 0),
// checks UDP on the same number, then closes both listeners: the agent binds
// the number moments later. Another process can take the port in between; the
// agent then fails to start and [StartE] retries with new ports.
func FreePort(ip string, udp bool) (int, error) {
	var lastErr error
	for range 100 {
		port, err := tryPort(ip, udp)
		if err != nil {
			lastErr = err
			continue
		}
		handedOutMu.Lock()
		taken := handedOut[port]
		handedOut[port] = true
		handedOutMu.Unlock()
		if !taken {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port on %s: %v", ip, lastErr)
}

// tryPort makes one attempt for FreePort.
func tryPort(ip string, udp bool) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	if udp {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			return 0, err
		}
		pc.Close()
	}
	return port, nil
}

// agentPorts are the ports of one agent. Zero means the listener is disabled.
type agentPorts struct {
	HTTP    int // TCP on clientAddr
	HTTPS   int // TCP on clientAddr
	DNS     int // TCP and UDP on clientAddr
	GRPC    int // TCP on clientAddr
	SerfLAN int // TCP and UDP on the bind address
	SerfWAN int // TCP and UDP on the bind address
	Server  int // TCP on the bind address (server RPC)
}

// pickAgentPorts is pickPorts; tests replace it to simulate port conflicts.
var pickAgentPorts = pickPorts

// pickPorts chooses free ports for an agent bound to bindAddr.
func pickPorts(bindAddr string, dns, grpc, https bool) (agentPorts, error) {
	var p agentPorts
	type want struct {
		dst  *int
		ip   string
		udp  bool
		skip bool
	}
	for _, w := range []want{
		{&p.HTTP, clientAddr, false, false},
		{&p.HTTPS, clientAddr, false, !https},
		{&p.DNS, clientAddr, true, !dns},
		{&p.GRPC, clientAddr, false, !grpc},
		{&p.SerfLAN, bindAddr, true, false},
		{&p.SerfWAN, bindAddr, true, false},
		{&p.Server, bindAddr, false, false},
	} {
		if w.skip {
			continue
		}
		port, err := FreePort(w.ip, w.udp)
		if err != nil {
			return agentPorts{}, err
		}
		*w.dst = port
	}
	return p, nil
}
