package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCPUTime: what cpuTime reads from /proc agrees with the kernel's own
// account of this process (getrusage), over 200 ms of CPU however long the
// machine takes to give it: no bound on wall time.
func TestCPUTime(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r0 := rusage()
	x := 0
	for rusage()-r0 < 200*time.Millisecond {
		for range 100000 {
			x++
		}
	}
	after, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	used, want := after-before, rusage()-r0
	// /proc counts in 10 ms ticks, read at slightly different moments.
	if d := used - want; d < -50*time.Millisecond || d > 50*time.Millisecond {
		t.Fatalf("cpuTime read %v of CPU where getrusage says %v (%d loops)", used, want, x)
	}
	if _, err := cpuTime(0); err == nil {
		t.Fatal("pid 0: no error")
	}
}

// TestSchedPolicy: schedPolicy moves every thread of a running Go process
// (several threads of its own) to SCHED_IDLE and back, and says when the
// process is gone.
func TestSchedPolicy(t *testing.T) {
	if os.Getenv("BENCH_SCHED_HELPER") == "1" {
		// The child: threads that stay, until the parent kills it.
		for range 4 {
			go func() {
				runtime.LockOSThread()
				select {}
			}()
		}
		select {}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSchedPolicy$")
	cmd.Env = append(os.Environ(), "BENCH_SCHED_HELPER=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	policies := func() map[int]uint32 {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]uint32{}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			if a, err := unix.SchedGetAttr(tid, 0); err == nil {
				got[tid] = a.Policy
			}
		}
		return got
	}
	for len(policies()) < 5 {
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []uint32{unix.SCHED_IDLE, unix.SCHED_NORMAL} {
		err := schedPolicy(pid, want)
		if errors.Is(err, unix.EPERM) {
			t.Skipf("not allowed to change the policy here: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		got := policies()
		for tid, p := range got {
			if p != want {
				t.Errorf("thread %d has policy %d, want %d (all: %v)", tid, p, want, got)
			}
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := schedPolicy(pid, unix.SCHED_IDLE); err == nil {
		t.Errorf("process %d ended: no error", pid)
	}
}
