package testconsul

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

const (
	// startTimeout bounds how long Start and Restart wait for an agent to
	// become ready.
	startTimeout = 60 * time.Second
	// stopGrace is how long Stop waits after SIGINT before it sends SIGKILL.
	stopGrace = 10 * time.Second
	// startAttempts is how many times StartE tries with fresh ports when
	// the agent could not bind one of them.
	startAttempts = 3
	// failureLogLines is how many log lines are shown when a test fails.
	failureLogLines = 50
)

// Agent is a running (or stopped) Consul agent process. Its ports, node name
// and data directory stay the same across Stop and Restart. The methods are
// safe for concurrent use.
type Agent struct {
	opts    Options // with defaults filled in
	bin     string
	dir     string // working directory: config, log, data
	ownsDir bool   // dir was created by StartE and is removed by Close
	cfgPath string
	logPath string
	dataDir string // "" in dev mode
	ports   agentPorts
	tls     tlsFiles // with Options.HTTPS
	logf    func(string, ...any)
	client  *api.Client
	clientT *http.Transport // client's transport

	mu   sync.Mutex // serialises launch and stop
	proc *process   // nil when not running
}

// process is one run of the agent's binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // exit error, set before done is closed
}

// Start starts an agent and waits up to 60s for it to be ready (see
// WaitReady). It fails the test if the agent does not start. The agent
// works in a directory from tb.TempDir. At the end of the test a cleanup
// kills it (its state is thrown away, so a graceful stop would only cost
// time) and, if the test failed and opts.LogOutput is nil, prints the last
// 50 lines of its log.
func Start(tb testing.TB, opts Options) *Agent {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	a, err := start(ctx, opts, tb.Name(), tb.TempDir(), false, tb.Logf)
	if err != nil {
		tb.Fatalf("testconsul: %v", err)
	}
	tb.Cleanup(func() {
		a.Kill()
		if tb.Failed() && opts.LogOutput == nil {
			tb.Logf("testconsul: last lines of the log of consul agent %s (%s):\n%s",
				a.NodeName(), a.LogPath(), a.logTail(failureLogLines))
		}
	})
	return a
}

// StartE starts an agent like Start does, without a testing.TB, for use in
// TestMain. It waits for the agent to be ready until ctx is done or for at
// most 60s. logf, if not nil, receives progress messages. The agent works in
// a new temporary directory; call Close to kill it and remove that
// directory.
func StartE(ctx context.Context, opts Options, logf func(string, ...any)) (*Agent, error) {
	dir, err := os.MkdirTemp("", "testconsul-")
	if err != nil {
		return nil, err
	}
	a, err := start(ctx, opts, fmt.Sprintf("agent-%d", os.Getpid()), dir, true, logf)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return a, nil
}

// start implements Start and StartE. nameBase is the start of the default
// node name; dir is the agent's working directory.
func start(ctx context.Context, opts Options, nameBase, dir string, ownsDir bool, logf func(string, ...any)) (*Agent, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if logf == nil {
		logf = func(string, ...any) {}
	}
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	opts, err = opts.withDefaults(nameBase)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		opts:    opts,
		bin:     bin,
		dir:     dir,
		ownsDir: ownsDir,
		cfgPath: filepath.Join(dir, "consul.json"),
		logPath: filepath.Join(dir, "consul.log"),
		logf:    logf,
	}
	if !opts.Dev {
		a.dataDir = opts.DataDir
		if a.dataDir == "" {
			a.dataDir = filepath.Join(dir, "data")
		}
		if err := os.MkdirAll(a.dataDir, 0o700); err != nil {
			return nil, err
		}
	}

	if opts.HTTPS {
		if a.tls, err = writeTLSFiles(dir); err != nil {
			return nil, err
		}
	}
	began := time.Now()
	for attempt := 1; ; attempt++ {
		a.ports, err = pickAgentPorts(opts.BindAddr, opts.DNS, opts.GRPC, opts.HTTPS)
		if err != nil {
			return nil, err
		}
		if err := writeConfig(a.cfgPath, opts, a.ports, a.dataDir, a.tls); err != nil {
			return nil, err
		}
		a.client, a.clientT = a.newClient(a.HTTPAddr())
		logStart := a.logSize()
		if err := a.launch(); err != nil {
			return nil, err
		}
		err = a.WaitReady(ctx)
		if err == nil {
			break
		}
		a.Kill()
		if attempt < startAttempts && ctx.Err() == nil && a.logContainsSince(logStart, "address already in use") {
			logf("testconsul: consul agent %s could not bind its ports, retrying with new ones", opts.NodeName)
			a.appendLog("--- testconsul: retrying with new ports ---\n")
			continue
		}
		return nil, err
	}
	logf("testconsul: consul agent %s (dc %s) ready at http://%s in %v",
		opts.NodeName, opts.Datacenter, a.HTTPAddr(), time.Since(began).Round(time.Millisecond))
	return a, nil
}

// launch starts the agent's process. The log file is opened for appending,
// so that it keeps the output of earlier runs.
func (a *Agent) launch() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc != nil {
		return fmt.Errorf("consul agent %s is already running", a.opts.NodeName)
	}
	logFile, err := os.OpenFile(a.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	var out io.Writer = logFile
	if a.opts.LogOutput != nil {
		out = io.MultiWriter(logFile, a.opts.LogOutput)
	}
	args := []string{"agent"}
	if a.opts.Dev {
		args = append(args, "-dev")
	}
	args = append(args, "-config-file", a.cfgPath)
	args = append(args, a.opts.ExtraArgs...)

	cmd := exec.Command(a.bin, args...)
	cmd.Dir = a.dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start consul agent %s: %w", a.opts.NodeName, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	a.proc = p
	return nil
}

// Stop stops the agent gracefully: SIGINT, then SIGKILL if it is still
// running 10s later. It returns once the process has exited. Consul servers
// do not leave the cluster on SIGINT (other members see them fail) and stop
// at once; client agents leave it, which takes about 3s. Kill is always
// immediate. Stop does nothing if the agent is not running.
func (a *Agent) Stop() {
	a.stop(os.Interrupt)
}

// Kill kills the agent with SIGKILL and waits for the process to exit. It does
// nothing if the agent is not running.
func (a *Agent) Kill() {
	a.stop(nil)
}

// stop sends sig (nil: SIGKILL right away) and waits for the exit, sending
// SIGKILL after stopGrace.
func (a *Agent) stop(sig os.Signal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.proc
	if p == nil {
		return
	}
	a.proc = nil
	if sig != nil {
		_ = p.cmd.Process.Signal(sig)
		timer := time.NewTimer(stopGrace)
		defer timer.Stop()
		select {
		case <-p.done:
			return
		case <-timer.C:
			a.logf("testconsul: consul agent %s still running %v after %v, killing it", a.opts.NodeName, stopGrace, sig)
		}
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Close kills the agent and, if StartE created its working directory,
// removes that directory. Agents from Start need no Close.
func (a *Agent) Close() error {
	a.Kill()
	if a.ownsDir {
		return os.RemoveAll(a.dir)
	}
	return nil
}

// Restart stops the agent gracefully if it is running, starts it again with
// the same configuration (ports, node name, data directory) and waits up to
// 60s for it to be ready. It fails the test on error. A dev agent comes back
// with an empty state.
func (a *Agent) Restart(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := a.RestartE(ctx); err != nil {
		tb.Fatalf("testconsul: %v", err)
	}
}

// RestartE is Restart without a testing.TB; it waits for the agent to be
// ready until ctx is done or for at most 60s. Unlike a first start, it cannot
// pick new ports: if another program took one of the agent's ports while it
// was stopped, RestartE fails, with the agent's bind error in the message.
func (a *Agent) RestartE(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	a.Stop()
	a.appendLog("--- testconsul: restarting ---\n")
	// Connections to the old process are dead; do not reuse them.
	a.clientT.CloseIdleConnections()
	if err := a.launch(); err != nil {
		return err
	}
	began := time.Now()
	if err := a.WaitReady(ctx); err != nil {
		return err
	}
	a.logf("testconsul: consul agent %s restarted, ready in %v", a.opts.NodeName, time.Since(began).Round(time.Millisecond))
	return nil
}

// WaitReady waits until the agent serves requests: its HTTP API answers, it
// knows a cluster leader and, for a server, its own node is in the catalog,
// so that services registered right after are synced to the catalog. It
// returns an error, with the end of the agent's log, if the process exits or
// ctx is done first.
func (a *Agent) WaitReady(ctx context.Context) error {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p == nil {
		return fmt.Errorf("consul agent %s is not running", a.opts.NodeName)
	}
	// Cancel the checks as soon as the process exits: a check can hang when
	// the agent failed to bind its HTTP port and another program holds it.
	checkCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-checkCtx.Done():
		}
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := a.checkReady(checkCtx)
		if err == nil {
			return nil
		}
		select {
		case <-checkCtx.Done():
		case <-tick.C:
			continue
		}
		select {
		case <-p.done:
			return fmt.Errorf("consul agent %s exited before it was ready (%v); last log lines:\n%s",
				a.opts.NodeName, p.err, a.logTail(failureLogLines))
		default:
			return fmt.Errorf("consul agent %s not ready: %v (last check: %v); last log lines:\n%s",
				a.opts.NodeName, ctx.Err(), err, a.logTail(failureLogLines))
		}
	}
}

// checkReady makes one readiness check for WaitReady.
func (a *Agent) checkReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	leader, err := a.client.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no cluster leader yet")
	}
	if a.opts.Dev || a.opts.Server {
		node, _, err := a.client.Catalog().Node(a.opts.NodeName, q)
		if err != nil {
			return err
		}
		if node == nil || node.Node == nil {
			return fmt.Errorf("node %s not in the catalog yet", a.opts.NodeName)
		}
	}
	return nil
}

// HTTPAddr returns the address of the agent's HTTP API, "127.0.0.1:port".
func (a *Agent) HTTPAddr() string { return hostPort(clientAddr, a.ports.HTTP) }

// HTTPSAddr returns the address of the agent's HTTPS API,
// "127.0.0.1:port", or "" unless Options.HTTPS was set.
func (a *Agent) HTTPSAddr() string { return hostPort(clientAddr, a.ports.HTTPS) }

// CAFile returns the path of the PEM file of the CA that signed the HTTPS
// listener's certificate, or "" unless Options.HTTPS was set.
func (a *Agent) CAFile() string { return a.tls.CA }

// SerfLANAddr returns the agent's Serf LAN address ("ip:port"), for
// Options.RetryJoin of other agents.
func (a *Agent) SerfLANAddr() string { return hostPort(a.opts.BindAddr, a.ports.SerfLAN) }

// SerfWANAddr returns the agent's Serf WAN address ("ip:port"), for
// Options.RetryJoinWAN of servers in other datacenters.
func (a *Agent) SerfWANAddr() string { return hostPort(a.opts.BindAddr, a.ports.SerfWAN) }

// ServerAddr returns the agent's server RPC address ("ip:port"). Only
// servers listen on it.
func (a *Agent) ServerAddr() string { return hostPort(a.opts.BindAddr, a.ports.Server) }

// DNSAddr returns the address ("127.0.0.1:port", UDP and TCP) of the agent's
// DNS interface, or "" unless Options.DNS was set.
func (a *Agent) DNSAddr() string { return hostPort(clientAddr, a.ports.DNS) }

// GRPCAddr returns the address ("127.0.0.1:port") of the agent's plaintext
// gRPC listener, or "" unless Options.GRPC was set.
func (a *Agent) GRPCAddr() string { return hostPort(clientAddr, a.ports.GRPC) }

// Datacenter returns the agent's datacenter.
func (a *Agent) Datacenter() string { return a.opts.Datacenter }

// NodeName returns the agent's node name.
func (a *Agent) NodeName() string { return a.opts.NodeName }

// Token returns the ACL initial management token, or "" when ACLs are off.
func (a *Agent) Token() string { return a.opts.ACLInitialManagementToken }

// LogPath returns the path of the file holding the agent's output. The file
// keeps the output of all the runs of the agent (Restart appends).
func (a *Agent) LogPath() string { return a.logPath }

// PID returns the process id of the running agent, or 0 when it is not
// running.
func (a *Agent) PID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc == nil {
		return 0
	}
	return a.proc.cmd.Process.Pid
}

// DataDir returns a non-dev agent's data directory, or "" for a dev agent.
func (a *Agent) DataDir() string { return a.dataDir }

// Client returns an API client for the agent, with the ACL initial
// management token when ACLs are on. The client is shared: do not change its
// token or headers.
func (a *Agent) Client() *api.Client { return a.client }

// ClientAt returns a new API client talking to addr ("host:port") with the
// agent's token (see Client): typically addr is a CountingProxy in front of
// the agent.
func (a *Agent) ClientAt(addr string) *api.Client {
	c, _ := a.newClient(addr)
	return c
}

// newClient returns an API client for addr with the agent's token, and its
// transport. The HTTP client is built here rather than from the environment,
// so CONSUL_* TLS variables of the developer's shell do not apply.
func (a *Agent) newClient(addr string) (*api.Client, *http.Transport) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	c, err := api.NewClient(&api.Config{
		Address:    addr,
		Scheme:     "http",
		Token:      a.opts.ACLInitialManagementToken,
		HttpClient: &http.Client{Transport: tr},
	})
	if err != nil {
		// api.NewClient fails only on TLS or address-scheme problems,
		// which a plain "host:port" over HTTP cannot have.
		panic(fmt.Sprintf("testconsul: api client for %s: %v", addr, err))
	}
	return c, tr
}

// hostPort joins ip and port, or returns "" for port 0 (disabled).
func hostPort(ip string, port int) string {
	if port == 0 {
		return ""
	}
	return net.JoinHostPort(ip, strconv.Itoa(port))
}

// logTail returns the last n lines of the agent's log file.
func (a *Agent) logTail(n int) string {
	const maxRead = 256 << 10
	f, err := os.Open(a.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", a.logPath, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxRead {
		_, _ = f.Seek(fi.Size()-maxRead, io.SeekStart)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", a.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSize returns the size of the agent's log file (0 if it does not exist).
func (a *Agent) logSize() int64 {
	fi, err := os.Stat(a.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logContainsSince reports whether the agent's log, from byte offset on,
// contains s.
func (a *Agent) logContainsSince(offset int64, s string) bool {
	data, err := os.ReadFile(a.logPath)
	if err != nil || int64(len(data)) < offset {
		return false
	}
	return bytes.Contains(data[offset:], []byte(s))
}

// appendLog writes a harness note into the agent's log file.
func (a *Agent) appendLog(s string) {
	f, err := os.OpenFile(a.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString(s)
}
