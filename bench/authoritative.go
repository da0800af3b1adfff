package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// The authoritative servers the DNS section compares glimpse with: NSD and
// Knot DNS from Debian, each answering the same names with the same
// records from a zone file written from glimpse's own answers, with one
// UDP worker on the servers' CPUs, as glimpse has one socket per CPU.

// zoneFile writes a zone file of the domain holding, for every name of the
// bench's queries, the records glimpse answers (answer and additional
// sections), with an SOA and an NS at the apex.
func (b *bench) zoneFile(path string) error {
	var z strings.Builder
	origin := strings.TrimSuffix(domain, ".") + "."
	fmt.Fprintf(&z, "$ORIGIN %s\n$TTL 5\n", origin)
	fmt.Fprintf(&z, "@ 5 IN SOA ns.%s hostmaster.%s 1 3600 600 86400 5\n", origin, origin)
	fmt.Fprintf(&z, "@ 5 IN NS ns.%s\nns.%s 5 IN A 127.0.0.1\n", origin, origin)
	seen := map[string]bool{}
	for j := 0; j < b.topo.jobs; j++ {
		for p := 0; p < b.topo.products; p++ {
			for _, qt := range []uint16{mdns.TypeSRV, mdns.TypeA} {
				r, err := exchange(b.g.dnsAddr, glimpseName(p, j), qt)
				if err != nil {
					return err
				}
				if r.Rcode != mdns.RcodeSuccess || len(r.Answer) == 0 {
					return fmt.Errorf("glimpse %s %s: %s", mdns.TypeToString[qt], glimpseName(p, j), mdns.RcodeToString[r.Rcode])
				}
				for _, rr := range append(r.Answer, r.Extra...) {
					if rr.Header().Rrtype == mdns.TypeOPT {
						continue
					}
					if line := rr.String(); !seen[line] {
						seen[line] = true
						z.WriteString(line + "\n")
					}
				}
			}
		}
	}
	return os.WriteFile(path, []byte(z.String()), 0o644)
}

// startAuthoritative starts NSD or Knot DNS (name "nsd" or "knot") on a free
// address, serving zone, and waits until it answers.
func (b *bench) startAuthoritative(ctx context.Context, name, zone string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	host, port, _ := strings.Cut(addr, ":")
	dir := filepath.Join(b.work, name)
	if err := os.MkdirAll(filepath.Join(dir, "db"), 0o755); err != nil {
		return nil, "", err
	}
	zoneName := strings.TrimSuffix(domain, ".")
	// As many UDP workers as glimpse-agent has sockets; NSD's get a
	// socket each (SO_REUSEPORT), as glimpse's do.
	workers := b.udpSockets()
	var bin string
	var args []string
	conf := filepath.Join(dir, name+".conf")
	switch name {
	case "nsd":
		bin = "/usr/sbin/nsd"
		args = []string{"-d", "-c", conf}
		text := fmt.Sprintf(`server:
    ip-address: %s@%s
    port: %s
    server-count: %d
    reuseport: yes
    username: ""
    chroot: ""
    zonesdir: "%s"
    database: ""
    pidfile: "%s/nsd.pid"
    xfrdfile: "%s/xfrd.state"
    zonelistfile: "%s/zone.list"
    xfrdir: "%s"
    logfile: "%s/nsd.log"
    verbosity: 0
    hide-version: yes
remote-control:
    control-enable: no
zone:
    name: "%s"
    zonefile: "%s"
`, host, port, port, workers, dir, dir, dir, dir, dir, dir, zoneName, zone)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return nil, "", err
		}
	case "knot":
		bin = "/usr/sbin/knotd"
		args = []string{"-c", conf}
		text := fmt.Sprintf(`server:
    rundir: "%s"
    listen: %s@%s
    udp-workers: %d
    tcp-workers: 1
    background-workers: 1
database:
    storage: "%s/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "%s"
    semantic-checks: off
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: "%s"
    file: "%s"
`, dir, host, port, workers, dir, dir, zoneName, zone)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return nil, "", err
		}
	default:
		return nil, "", fmt.Errorf("no authoritative server %q", name)
	}
	if _, err := exec.LookPath(bin); err != nil {
		return nil, "", fmt.Errorf("%s not found (make bench installs it): %w", bin, err)
	}
	p, err := startProc(name, b.cfg.serverCPUs, filepath.Join(b.work, name+".log"), bin, args...)
	if err != nil {
		return nil, "", err
	}
	if err := waitDNS(ctx, p, addr); err != nil {
		p.stop()
		return nil, "", err
	}
	// Loaded: it answers a name of the zone.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := exchange(addr, glimpseName(0, 0), mdns.TypeSRV)
		if err == nil && r.Rcode == mdns.RcodeSuccess && len(r.Answer) == b.topo.perJob {
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, "", fmt.Errorf("%s never answered %s (log %s): %v", name, glimpseName(0, 0), p.log, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p, addr, nil
}

// cpuTree returns the CPU time of process pid and of its descendants: NSD
// answers in a child process.
func cpuTree(pid int) (cpuUse, error) {
	total, err := cpuTimes(pid)
	if err != nil {
		return cpuUse{}, err
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		data, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(data)) {
			child, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if d, err := cpuTree(child); err == nil {
				total.user += d.user
				total.sys += d.sys
			}
		}
	}
	return total, nil
}
