package testconsul

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// HTTPConnections counts the established TCP connections to the agent's
// HTTP port from this host, whoever opened them: what Consul's
// limits.http_max_conns_per_client counts for 127.0.0.1.
func (a *Agent) HTTPConnections() (int, error) {
	return connectionsTo(a.ports.HTTP)
}

// HTTPSConnections counts the established TCP connections to the agent's
// HTTPS port from this host (0 without Options.HTTPS). Consul counts them
// in the same per-client limit as those to its HTTP port.
func (a *Agent) HTTPSConnections() (int, error) {
	if a.ports.HTTPS == 0 {
		return 0, nil
	}
	return connectionsTo(a.ports.HTTPS)
}

// connectionsTo counts the established IPv4 TCP connections whose remote
// end is port (both ends of a loopback connection are listed; only the
// client's has port as its remote end).
func connectionsTo(port int) (int, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != "01" { // 01: ESTABLISHED
			continue
		}
		_, hexPort, _ := strings.Cut(fields[2], ":")
		if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
			n++
		}
	}
	return n, sc.Err()
}
