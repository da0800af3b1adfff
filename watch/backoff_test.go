package watch

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	configs := []Config{
		DefaultConfig(),
		{MinBackoff: time.Second, MaxBackoff: time.Second},
		{MinBackoff: 300 * time.Millisecond, MaxBackoff: 10 * time.Second},
		{MinBackoff: time.Millisecond, MaxBackoff: time.Hour},
		{MinBackoff: 5 * time.Second, MaxBackoff: time.Second}, // min above max: max wins
	}
	for _, cfg := range configs {
		for n := 1; n <= 80; n++ {
			// The capped exponential: MinBackoff × 2^(n-1), at most MaxBackoff.
			base := cfg.MinBackoff
			for i := 1; i < n && base < cfg.MaxBackoff; i++ {
				base *= 2
			}
			base = min(base, cfg.MaxBackoff)
			// Jitter scales it by [0.5, 1.5), and MaxBackoff stays a hard cap.
			lo, hi := time.Duration(float64(base)*0.5), min(time.Duration(float64(base)*1.5), cfg.MaxBackoff+1)
			for range 200 {
				d := backoff(cfg, n)
				if d < lo || d >= hi {
					t.Fatalf("min %v max %v: backoff(%d) = %v, want in [%v, %v)", cfg.MinBackoff, cfg.MaxBackoff, n, d, lo, hi)
				}
				if d > cfg.MaxBackoff {
					t.Fatalf("min %v max %v: backoff(%d) = %v, above MaxBackoff", cfg.MinBackoff, cfg.MaxBackoff, n, d)
				}
			}
		}
	}
}

// TestBackoffGrows checks the exponential's first steps and the cap with the
// defaults (100 ms doubling, 3 s cap).
func TestBackoffGrows(t *testing.T) {
	cfg := DefaultConfig()
	for _, tt := range []struct {
		n    int
		base time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{5, 1600 * time.Millisecond},
		// At the cap, base × U[0.5, 1.5) clipped to the cap: mean 7/8 of it.
		{6, 3 * time.Second * 7 / 8},
		{1000, 3 * time.Second * 7 / 8},
	} {
		var sum time.Duration
		const runs = 400
		for range runs {
			sum += backoff(cfg, tt.n)
		}
		// The mean of base × U[0.5, 1.5) is base; 400 runs keep it within
		// 10 % with overwhelming probability.
		mean := sum / runs
		if mean < tt.base*9/10 || mean > tt.base*11/10 {
			t.Errorf("backoff(%d): mean %v over %d runs, want about %v", tt.n, mean, runs, tt.base)
		}
	}
}

// TestBackoffJitter checks that two watchers failing together do not retry
// in step.
func TestBackoffJitter(t *testing.T) {
	cfg := DefaultConfig()
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[backoff(cfg, 3)] = true
	}
	if len(seen) < 10 {
		t.Errorf("50 back-offs took only %d distinct values", len(seen))
	}
}

func TestSleep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if sleep(ctx, time.Hour) {
		t.Error("sleep on a cancelled context returned true")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("sleep on a cancelled context took %v", d)
	}

	// Cancelled while sleeping.
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- sleep(ctx, time.Hour) }()
	cancel()
	select {
	case ok := <-done:
		if ok {
			t.Error("sleep cancelled midway returned true")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sleep did not return after its context was cancelled")
	}

	// A completed wait.
	if !sleep(context.Background(), time.Millisecond) {
		t.Error("sleep with a live context returned false")
	}
}
