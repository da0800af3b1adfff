package main

import (
	"os"
	"syscall"
	"testing"
	"time"
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
