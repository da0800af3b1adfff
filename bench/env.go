package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is a child process: a server or a load generator.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  string
}

// startProc starts bin with args, on cpus (a taskset list, "" for any),
// its output going to the file logPath.
func startProc(name, cpus, logPath, bin string, args ...string) (*proc, error) {
	bin, args = onCPUs(cpus, bin, args)
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// onCPUs returns the command line that runs bin with args on cpus (a
// taskset list; "" for any).
func onCPUs(cpus, bin string, args []string) (string, []string) {
	if cpus == "" {
		return bin, args
	}
	return "taskset", append([]string{"-c", cpus, bin}, args...)
}

// pid is the process id (of the program itself: taskset execs it).
func (p *proc) pid() int { return p.cmd.Process.Pid }

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to 10 s, then kills.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last lines of the process's output, for errors.
func (p *proc) tail(n int) string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	return tailLines(string(data), n)
}

// rssKiB returns a process's resident set size in KiB.
func rssKiB(pid int) (int64, error) {
	v := procLine(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	return strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
}

// pin moves every thread of pid onto cpus.
func pin(pid int, cpus string) error {
	if cpus == "" {
		return nil
	}
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		return fmt.Errorf("taskset %d: %v: %s", pid, err, out)
	}
	return nil
}

// schedPolicy sets the scheduling policy of every thread of pid:
// unix.SCHED_IDLE runs them only when their CPU has nothing else to run, so
// that a server woken by a query takes the CPU from them at once;
// unix.SCHED_NORMAL is every process's default. A thread started during a
// pass inherits its creator's policy, so passes repeat until one changes
// nothing.
func schedPolicy(pid int, policy uint32) error {
	for pass := 0; pass < 10; pass++ {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		changed := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			a, err := unix.SchedGetAttr(tid, 0)
			if errors.Is(err, unix.ESRCH) {
				continue // the thread ended
			}
			if err != nil {
				return fmt.Errorf("sched_getattr %d: %w", tid, err)
			}
			if a.Policy == policy {
				continue
			}
			err = unix.SchedSetAttr(tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy, Nice: a.Nice}, 0)
			if err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("sched_setattr %d: %w", tid, err)
			}
			changed++
		}
		if changed == 0 {
			return nil
		}
	}
	return fmt.Errorf("process %d: its threads' scheduling policy kept changing", pid)
}

// cpuCount returns how many CPUs a taskset list names ("" is every CPU).
func cpuCount(list string) int {
	if list == "" {
		return runtime.NumCPU()
	}
	n := 0
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, _ := strconv.Atoi(lo)
		b := a
		if isRange {
			b, _ = strconv.Atoi(hi)
		}
		n += b - a + 1
	}
	return n
}

// resolveCPUs fills in "auto" CPU sets: on 2+ CPUs, the servers get CPU 0
// and the load generators the others; on one CPU nothing is pinned.
func resolveCPUs(cfg *config) {
	n := runtime.NumCPU()
	if cfg.serverCPUs == "auto" {
		cfg.serverCPUs = ""
		if n >= 2 {
			cfg.serverCPUs = "0"
		}
	}
	if cfg.clientCPUs == "auto" {
		cfg.clientCPUs = ""
		if n >= 2 {
			cfg.clientCPUs = fmt.Sprintf("1-%d", n-1)
			if n == 2 {
				cfg.clientCPUs = "1"
			}
		}
	}
}

// freeAddr returns a 127.0.0.1 address whose port is free for both TCP and
// UDP at the time of the call.
func freeAddr() (string, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr, nil
		}
	}
	return "", errors.New("no free port for TCP and UDP")
}

// waitHTTP waits until url answers 200, or the process exits, or timeout.
func waitHTTP(ctx context.Context, p *proc, url string, timeout time.Duration) error {
	return p.poll(ctx, timeout, 5*time.Millisecond, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, url+" not ready")
}

// poll calls ready every `every` until it is true, the process exits, ctx
// ends or timeout passes; failing, it says what (and the process's last
// output).
func (p *proc) poll(ctx context.Context, timeout, every time.Duration, ready func() bool, what string) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !p.running() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(20))
		}
		if ready() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
	return fmt.Errorf("%s: %s after %v\n%s", p.name, what, timeout, p.tail(20))
}

// consulWait and productWait are glimpse-agent's blocking-query waits (its
// defaults) of a zone's own loops and of a product's, on which the bound of
// its own Consul requests rests.
const (
	consulWait  = time.Minute
	productWait = 5 * time.Minute
)

// settledRSS returns g's RSS after it collected garbage and returned every
// free page to the OS (POST /debug/free-os-memory, with -http.pprof): the
// memory the agent holds, neither the garbage of what just happened nor the
// free heap the runtime keeps for a while, whose amount depends on where
// the last collection fell and which made differences of RSS noisy.
func settledRSS(g *glimpse) (int64, error) {
	resp, err := http.Post("http://"+g.httpAddr+"/debug/free-os-memory", "", nil)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("free-os-memory: %s", resp.Status)
	}
	time.Sleep(time.Second)
	return rssKiB(g.pid())
}

// glimpse is a running glimpse-agent.
type glimpse struct {
	*proc
	dnsAddr, httpAddr string
}

// wholeZone returns the flags of an agent that holds its whole zone of
// products, as every agent did before products were watched on demand:
// every product pinned, and a connection budget whose blocking share (85 %)
// holds a read for each product and the zone's own, with room to spare.
// The budget follows the zone rather than the most the bench's main Consul
// allows (limits.http_max_conns_per_client = 16384): an agent caps its HTTP
// connections at its open files limit less its Consul and DNS budgets, and
// the fan-out's 10,000 subscribers must fit under a limit of 20,000 files.
// The sections written for that agent (DNS, propagation, fan-out, scale,
// soak) run it.
func wholeZone(products int) []string {
	conns := (products+64)*100/85 + 64
	return []string{"-watch.pin", "*", "-consul.max-conns", strconv.Itoa(conns)}
}

// startGlimpse starts glimpse-agent against consulAddr with flags (and
// -agent.args), and waits until it listens (not until it is synced: the
// caller decides what to wait for).
func (b *bench) startGlimpse(ctx context.Context, consulAddr, tag string, flags ...string) (*glimpse, error) {
	dnsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(b.work, "glimpse-"+tag)
	args := append([]string{
		"-consul.addr", consulAddr,
		"-dns.addr", dnsAddr,
		"-http.addr", httpAddr,
		"-dns.udp-sockets", strconv.Itoa(b.udpSockets()),
		"-data.dir", data,
		"-http.max-subscribers", strconv.Itoa(b.cfg.subscribers + 1000),
		"-consul.start-timeout", "60s",
		"-http.pprof",
		"-consul.wait", consulWait.String(),
		"-consul.product-wait", productWait.String(),
		"-providers.socket", "", // the bench writes no providers; its agents run side by side
	}, append(flags, b.cfg.agentArgs...)...)
	p, err := startProc("glimpse-agent", "", data+".log", b.cfg.agentBin, args...)
	if err != nil {
		return nil, err
	}
	g := &glimpse{proc: p, dnsAddr: dnsAddr, httpAddr: httpAddr}
	if err := waitHTTP(ctx, p, "http://"+httpAddr+"/healthz", 90*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return g, nil
}

// allCPUs is the taskset list of every CPU.
func allCPUs() string { return fmt.Sprintf("0-%d", runtime.NumCPU()-1) }

// placeForDNS pins Consul and glimpse-agent to the server CPUs and this
// program to the client CPUs, for DNS throughput runs; placeFree lets them
// all use every CPU, as they would on a host, for the other measurements.
func (b *bench) placeForDNS(g *glimpse) error {
	for _, pid := range []int{b.consul.PID(), g.pid()} {
		if err := pin(pid, b.cfg.serverCPUs); err != nil {
			return err
		}
	}
	return pin(os.Getpid(), b.cfg.clientCPUs)
}

func (b *bench) placeFree(g *glimpse) error {
	return b.unpin(b.consul.PID(), g.pid(), os.Getpid())
}

// unpin lets the processes use every CPU.
func (b *bench) unpin(pids ...int) error {
	if b.cfg.serverCPUs == "" && b.cfg.clientCPUs == "" {
		return nil
	}
	for _, pid := range pids {
		if err := pin(pid, allCPUs()); err != nil {
			return err
		}
	}
	return nil
}

// udpSockets is the UDP socket count of every DNS server in the run:
// glimpse-agent's default, one per CPU it may use.
func (b *bench) udpSockets() int { return cpuCount(b.cfg.serverCPUs) }

// userHZ is the unit of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture that exposes it to user space).
const userHZ = 100

// cpuUse is CPU time spent, in user space and in the kernel.
type cpuUse struct{ user, sys time.Duration }

func (c cpuUse) total() time.Duration { return c.user + c.sys }

func (c cpuUse) sub(d cpuUse) cpuUse { return cpuUse{c.user - d.user, c.sys - d.sys} }

// cpuTime returns the CPU time, user and system, that process pid and all
// its threads have used so far.
func cpuTime(pid int) (time.Duration, error) {
	c, err := cpuTimes(pid)
	return c.total(), err
}

// cpuTimes returns the user and system CPU time that process pid and all
// its threads have used so far.
func cpuTimes(pid int) (cpuUse, error) {
	if pid <= 0 {
		return cpuUse{}, errors.New("no process")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuUse{}, err
	}
	// The command name, in parentheses, may hold spaces; the fields
	// after it start with the state (field 3). utime and stime are
	// fields 14 and 15.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return cpuUse{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return cpuUse{}, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	var ticks [2]int64
	for k, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return cpuUse{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks[k] = v
	}
	return cpuUse{time.Duration(ticks[0]) * time.Second / userHZ, time.Duration(ticks[1]) * time.Second / userHZ}, nil
}
