package resolve

import (
	"context"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestCircuitBreaker: breakAfter timeouts in a row open a registry's
// circuit: its fetches are refused at once, others' are not; past the
// cool-down exactly one probe goes through, and a probe that never got
// a slot (its wait ended) leaves the circuit half-open for the next
// caller rather than shut for ever; an answer closes it.
func TestCircuitBreaker(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	s := newSlots(4, 4, clock.now)
	ctx := context.Background()
	const sick = "sick.test"
	for range breakAfter {
		if b := s.acquire(ctx, sick); b != nil {
			t.Fatalf("before the circuit opens: %+v", b)
		}
		s.release(sick, outcomeFailure, 504)
	}
	if b := s.acquire(ctx, sick); b == nil || !b.open || b.code != 504 || b.failures != breakAfter {
		t.Fatalf("after %d timeouts: %+v, want the circuit open with the last 504", breakAfter, b)
	}
	if b := s.acquire(ctx, "ok.test"); b != nil {
		t.Fatalf("another registry while the circuit is open: %+v", b)
	}
	s.release("ok.test", outcomeAnswer, 0)

	clock.add(coolDown)
	// The pool is full: the probe waits for a slot and its wait ends.
	// One slot each: the last quarter is kept for registries holding none.
	busy := []string{"a.test", "b.test", "c.test", "d.test"}
	for _, h := range busy {
		if b := s.acquire(ctx, h); b != nil {
			t.Fatalf("filling the pool: %+v", b)
		}
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	b := s.acquire(short, sick)
	cancel()
	if b == nil || b.open {
		t.Fatalf("a probe with no slot: %+v, want a plain busy", b)
	}
	for _, h := range busy {
		s.release(h, outcomeAnswer, 0)
	}
	// The next caller is the probe; a second is refused while it runs.
	if b := s.acquire(ctx, sick); b != nil {
		t.Fatalf("the probe after the cool-down: %+v, want a slot", b)
	}
	if b := s.acquire(ctx, sick); b == nil || !b.open {
		t.Fatalf("a second caller while the probe runs: %+v, want refused", b)
	}
	s.release(sick, outcomeAnswer, 0)
	if b := s.acquire(ctx, sick); b != nil {
		t.Fatalf("after the probe's answer: %+v, want the circuit closed", b)
	}
	s.release(sick, outcomeAnswer, 0)
}
