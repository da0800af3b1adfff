// Package testunbound runs a real Unbound resolver for tests, configured from
// docs/unbound-glimpse.conf (the configuration docs/unbound.md tells operators
// to install) with its forward zone pointed at the DNS server under test.
//
// Unbound is a Debian package (`make deps` installs it). A test that needs it
// fails, rather than skips, when it is missing.
package testunbound

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// DefaultDomain is the zone that docs/unbound-glimpse.conf forwards to the
// agent.
const DefaultDomain = "srv.glimpse.io."

// ConfFile is the repository-relative path of the documented configuration.
const ConfFile = "docs/unbound-glimpse.conf"

const (
	startAttempts = 3
	readyTimeout  = 15 * time.Second
	stopTimeout   = 5 * time.Second
	logTailLines  = 60
)

// Unbound is a running unbound process listening on 127.0.0.1.
type Unbound struct {
	addr    string
	dir     string
	logPath string
	outPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error

	stopOnce sync.Once
}

// Start runs unbound in the foreground with the zone for domain (e.g.
// "srv.glimpse.io."; empty means DefaultDomain) sent to agentAddr, a host:port
// such as "127.0.0.1:5959" or "[::1]:5959". It returns once unbound answers
// queries; the test's cleanup stops it. On test failure the tail of unbound's
// log is printed.
func Start(tb testing.TB, agentAddr string, domain string) *Unbound {
	tb.Helper()
	return StartFile(tb, agentAddr, domain, ConfFile)
}

// StartFile is Start with another documented configuration, confFile
// (repository-relative), whose forward-addr or stub-addr lines are pointed
// at agentAddr.
func StartFile(tb testing.TB, agentAddr, domain, confFile string) *Unbound {
	tb.Helper()

	bin, err := Binary()
	if err != nil {
		tb.Fatal(err)
	}
	upstream, err := unboundAddr(agentAddr)
	if err != nil {
		tb.Fatalf("testunbound: agent address: %v", err)
	}
	if domain == "" {
		domain = DefaultDomain
	}
	domain = dns.Fqdn(strings.ToLower(domain))
	if _, ok := dns.IsDomainName(domain); !ok {
		tb.Fatalf("testunbound: bad domain %q", domain)
	}
	root, err := testconsul.RepoRoot()
	if err != nil {
		tb.Fatalf("testunbound: %v", err)
	}
	doc, err := os.ReadFile(filepath.Join(root, confFile))
	if err != nil {
		tb.Fatalf("testunbound: %v", err)
	}
	docConf, err := rewriteConf(string(doc), upstream, domain)
	if err != nil {
		tb.Fatalf("testunbound: %s: %v", confFile, err)
	}

	dir := tb.TempDir()
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		u, err := start(bin, dir, confFile, docConf, attempt)
		if err == nil {
			tb.Cleanup(func() {
				u.stop()
				if tb.Failed() {
					tb.Logf("testunbound: unbound on %s, config %s; log tail:\n%s",
						u.addr, filepath.Join(u.dir, "unbound.conf"), u.LogTail(logTailLines))
				}
			})
			return u
		}
		lastErr = err
		var ce *confError
		if errors.As(err, &ce) {
			break
		}
	}
	tb.Fatalf("testunbound: %v", lastErr)
	return nil
}

// Addr is unbound's listening address, "127.0.0.1:port" (UDP and TCP).
func (u *Unbound) Addr() string { return u.addr }

// Dir is unbound's working directory (config, log, pidfile).
func (u *Unbound) Dir() string { return u.dir }

// Exchange sends m to unbound over UDP, retrying over TCP when truncated.
func (u *Unbound) Exchange(m *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, u.addr)
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, _, err = c.Exchange(m, u.addr)
	}
	return r, err
}

// Query asks unbound a recursive question for name (made fully qualified).
func (u *Unbound) Query(name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	return u.Exchange(m)
}

// LogTail returns up to n last lines of unbound's log file and its output.
func (u *Unbound) LogTail(n int) string {
	var b strings.Builder
	for _, p := range []string{u.logPath, u.outPath} {
		data, err := os.ReadFile(p)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(p), strings.Join(lines, "\n"))
	}
	if b.Len() == 0 {
		return "(empty)"
	}
	return b.String()
}

// Binary finds the unbound daemon on PATH or in /usr/sbin.
func Binary() (string, error) {
	if p, err := exec.LookPath("unbound"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/unbound", "/usr/local/sbin/unbound"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("unbound not installed: run `make deps`")
}

// unboundAddr turns host:port into Unbound's host@port.
func unboundAddr(hostport string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	if net.ParseIP(host) == nil {
		return "", fmt.Errorf("%q: forward-addr needs an IP address", hostport)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil || port == "0" {
		return "", fmt.Errorf("%q: bad port", hostport)
	}
	return host + "@" + port, nil
}

// rewriteConf points every forward-addr line of the documented configuration
// (or stub-addr line, for a stub-zone) at upstream, an Unbound address@port,
// and, when domain is not DefaultDomain, renames the zone.
func rewriteConf(doc, upstream, domain string) (string, error) {
	var out strings.Builder
	addrs := 0
	for _, line := range strings.SplitAfter(doc, "\n") {
		trimmed := strings.TrimSpace(line)
		key, _, _ := strings.Cut(trimmed, ":")
		if key == "forward-addr" || key == "stub-addr" {
			indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
			line = indent + key + ": " + upstream + "\n"
			addrs++
		} else if domain != DefaultDomain && !strings.HasPrefix(trimmed, "#") {
			line = strings.ReplaceAll(line, `"`+DefaultDomain+`"`, `"`+domain+`"`)
		}
		out.WriteString(line)
	}
	if addrs == 0 {
		return "", errors.New("no forward-addr (or stub-addr) line")
	}
	return out.String(), nil
}

func start(bin, dir, confFile, docConf string, attempt int) (*Unbound, error) {
	port, err := testconsul.FreePort("127.0.0.1", true)
	if err != nil {
		return nil, err
	}
	u := &Unbound{
		addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		dir:     dir,
		logPath: filepath.Join(dir, "unbound.log"),
		outPath: filepath.Join(dir, "unbound.out"),
		done:    make(chan struct{}),
	}
	// A previous attempt's log would confuse the tail.
	_ = os.Remove(u.logPath)

	conf := fmt.Sprintf(`# generated by internal/testunbound (attempt %d)
server:
    interface: 127.0.0.1
    port: %d
    do-daemonize: no
    chroot: ""
    username: ""
    directory: %q
    pidfile: %q
    use-syslog: no
    logfile: %q
    log-time-ascii: yes
    verbosity: 1
    log-queries: yes
    log-replies: yes
    log-servfail: yes
    module-config: "iterator"
    # Strict QNAME minimisation, where a stub zone uses it: no fallback to
    # full names when the server answers minimised questions badly.
    qname-minimisation: yes
    qname-minimisation-strict: yes
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow

remote-control:
    control-enable: no

# ---- %s ----
%s`, attempt, port, dir, filepath.Join(dir, "unbound.pid"), u.logPath, confFile, docConf)
	confPath := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	if checkconf := checkconfBinary(bin); checkconf != "" {
		if out, err := exec.Command(checkconf, confPath).CombinedOutput(); err != nil {
			return nil, &confError{fmt.Errorf("unbound-checkconf %s: %v\n%s\nconfig:\n%s", confPath, err, out, conf)}
		}
	}

	outFile, err := os.Create(u.outPath)
	if err != nil {
		return nil, err
	}
	u.cmd = exec.Command(bin, "-d", "-c", confPath)
	u.cmd.Dir = dir
	u.cmd.Stdout = outFile
	u.cmd.Stderr = outFile
	if err := u.cmd.Start(); err != nil {
		outFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		u.waitErr = u.cmd.Wait()
		outFile.Close()
		close(u.done)
	}()

	if err := u.waitReady(); err != nil {
		u.stop()
		return nil, fmt.Errorf("unbound (attempt %d, port %d): %v; log tail:\n%s", attempt, port, err, u.LogTail(logTailLines))
	}
	return u, nil
}

// confError is a configuration error: starting again will not help.
type confError struct{ error }

// checkconfBinary is unbound-checkconf beside the unbound binary or on PATH,
// or "" when there is none.
func checkconfBinary(bin string) string {
	p := filepath.Join(filepath.Dir(bin), "unbound-checkconf")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if p, err := exec.LookPath("unbound-checkconf"); err == nil {
		return p
	}
	return ""
}

// waitReady waits until unbound answers a query that it resolves locally
// (localhost. is one of its default local zones); any answer will do.
func (u *Unbound) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("localhost.", dns.TypeA)
	m.RecursionDesired = true
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-u.done:
			return fmt.Errorf("exited early: %v", u.waitErr)
		default:
		}
		if _, _, err := c.Exchange(m, u.addr); err == nil {
			return nil
		} else {
			lastErr = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer within %s: %v", readyTimeout, lastErr)
}

func (u *Unbound) stop() {
	u.stopOnce.Do(func() {
		if u.cmd == nil || u.cmd.Process == nil {
			return
		}
		select {
		case <-u.done:
			return
		default:
		}
		_ = u.cmd.Process.Signal(os.Interrupt)
		select {
		case <-u.done:
		case <-time.After(stopTimeout):
			_ = u.cmd.Process.Kill()
			<-u.done
		}
	})
}
