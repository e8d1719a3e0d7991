package rediscache_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
)

// TestCallerCancelIsNotAnOutage: a command cut short by its caller's own
// context (a request given up, a worker stopping) must not mark Redis down,
// count an error, or make the next requests skip Redis; a real outage must.
func TestCallerCancelIsNotAnOutage(t *testing.T) {
	rd := testenv.StartRedis(t)
	var errs atomic.Int64
	c := rediscache.New(0, // no memory tier: every Get goes to Redis
		rediscache.WithRedis(rd.Client(t)),
		rediscache.WithErrorHook(func(string) { errs.Add(1) }))
	t.Cleanup(func() { _ = c.Close() })

	bg := context.Background()
	c.Set(bg, "k", []byte("v"), time.Now().Add(time.Minute))

	done, cancel := context.WithCancel(bg)
	cancel()
	for _, op := range []struct {
		name string
		run  func()
	}{
		{"get", func() { c.Get(done, "k") }},
		{"set", func() { c.Set(done, "k2", []byte("v"), time.Now().Add(time.Minute)) }},
		{"lock", func() { c.Lock(done, "k3", time.Second) }},
	} {
		op.run()
		if !c.Available() || errs.Load() != 0 {
			t.Fatalf("%s with a cancelled context: available %v, %d errors counted", op.name, c.Available(), errs.Load())
		}
	}
	// Redis is used at once, not after an outage's probe interval.
	if b, ok := c.Get(bg, "k"); !ok || string(b) != "v" {
		t.Fatalf("get after cancelled commands: %q %v", b, ok)
	}

	// The real thing still counts.
	rd.Stop()
	c.Get(bg, "k")
	if c.Available() || errs.Load() == 0 {
		t.Fatalf("redis stopped: available %v, %d errors counted", c.Available(), errs.Load())
	}
}
