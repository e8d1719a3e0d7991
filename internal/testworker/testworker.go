// Package testworker starts regcap workers for tests, through worker.New,
// the constructor cmd/worker uses. The servers they talk to start from
// package testenv.
package testworker

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// Config configures Start: shorthands for what most tests
// set, and the worker's own Config for the rest. Zero values take the
// worker's defaults, except that no metrics listener is opened unless
// Config.MetricsAddr is set.
type Config struct {
	NATSURL string
	// Logger receives the worker's logs (default: warnings to t.Log).
	Logger *zap.Logger
	// RedisAddr is host:port of a Redis to share the cache through (empty:
	// in-process cache); it sets RedisURL.
	RedisAddr string
	// NoMemory turns the memory tier off; otherwise a zero MemorySize is
	// the default size.
	NoMemory bool
	// Config is the rest of the worker's configuration.
	Config worker.Config
}

// Worker is a running worker.
type Worker struct {
	*worker.Worker
	Log *zap.Logger
}

// Pending is the number of requests the worker holds beyond its memory
// tier.
func (w *Worker) Pending() int { return w.Resolver().Pending() }

// Start starts a worker through worker.New, the constructor
// cmd/worker uses, and shuts it down at cleanup.
func Start(t testing.TB, cfg Config) *Worker {
	t.Helper()
	c := cfg.Config
	c.NATSURL, c.Logger = cfg.NATSURL, cfg.Logger
	if c.Logger == nil {
		c.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	if cfg.RedisAddr != "" {
		c.RedisURL = "redis://" + cfg.RedisAddr
	}
	switch {
	case cfg.NoMemory:
		c.MemorySize = 0
	case c.MemorySize == 0:
		c.MemorySize = rediscache.DefaultMemorySize
	}
	if c.Version == "" {
		c.Version = "test"
	}
	w, err := worker.New(context.Background(), c)
	testenv.Must(t, err, "starting worker")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = w.Shutdown(ctx)
	})
	return &Worker{Worker: w, Log: c.Logger}
}
