package testconsul

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// pollInterval is how often WaitFor checks its condition.
const pollInterval = 20 * time.Millisecond

// WaitFor calls cond every 20ms until it returns true, and fails the test
// with the message msgf (formatted with args) if that does not happen within
// timeout. cond is called at once the first time. Use it instead of sleeping
// to wait for something to happen. Like t.Fatal, it must be called from the
// goroutine running the test.
func WaitFor(tb testing.TB, timeout time.Duration, cond func() bool, msgf string, args ...any) {
	tb.Helper()
	if cond() {
		return
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return
			}
		case <-deadline.C:
			if cond() {
				return
			}
			tb.Fatalf("testconsul: gave up after %v waiting for: %s", timeout, fmt.Sprintf(msgf, args...))
		}
	}
}

// Main runs a test binary's tests with one shared agent started from opts,
// stored in *shared before any test runs, and exits with their status. Use
// it as the body of TestMain.
func Main(m *testing.M, opts Options, shared **Agent) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	a, err := StartE(ctx, opts, func(string, ...any) {})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start consul:", err)
		os.Exit(1)
	}
	*shared = a
	code := m.Run()
	a.Close()
	os.Exit(code)
}
