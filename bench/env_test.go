package main

import (
	"os"
	"testing"
	"time"
)

func TestCPUTime(t *testing.T) {
	before, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn 300 ms of CPU; the ticks are 10 ms.
	deadline := time.Now().Add(300 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	after, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if used := after - before; used < 200*time.Millisecond || used > 5*time.Second {
		t.Fatalf("300 ms of busy work read as %v of CPU (%d loops)", used, x)
	}
	if _, err := cpuTime(0); err == nil {
		t.Fatal("pid 0: no error")
	}
}
