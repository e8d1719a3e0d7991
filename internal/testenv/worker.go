package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/registry"
)

// WorkerConfig configures StartWorker. Zero values take the worker's
// defaults.
type WorkerConfig struct {
	NATSURL      string
	RedisAddr    string // empty: in-process cache
	RegistryOpts []registry.Option
	QueueOpts    []queue.Option
	CacheOpts    []rediscache.Option
	// MemoryBytes bounds the memory tier (0: the default size).
	MemoryBytes uint64
	// NoMemory disables the memory tier.
	NoMemory bool
	// LockWait bounds the wait for another worker's fetch under the fleet
	// lock, used with Redis (0: the fetch timeout).
	LockWait time.Duration
	// Logger receives the worker's logs (default: warnings to t.Log).
	Logger *zap.Logger
}

// Worker is a running worker with what it was built from.
type Worker struct {
	*queue.Worker
	Conn  *nats.Conn
	Cache *rediscache.Cache
	Log   *zap.Logger
}

// StartWorker starts a worker wired as cmd/worker wires it, and shuts it
// down at cleanup.
func StartWorker(t testing.TB, cfg WorkerConfig) *Worker {
	t.Helper()
	log := cfg.Logger
	if log == nil {
		log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	mem := cfg.MemoryBytes
	switch {
	case cfg.NoMemory:
		mem = 0
	case mem == 0:
		mem = rediscache.DefaultMemorySize
	}
	nc := Connect(t, cfg.NATSURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	copts := append([]rediscache.Option{rediscache.WithLogger(log)}, cfg.CacheOpts...)
	if cfg.RedisAddr != "" {
		rdb, err := rediscache.NewClient("redis://" + cfg.RedisAddr)
		Must(t, err, "redis client")
		t.Cleanup(func() { _ = rdb.Close() })
		copts = append(copts, rediscache.WithRedis(rdb))
	}
	cache := rediscache.New(mem, copts...)
	t.Cleanup(func() { _ = cache.Close() })
	var qopts []queue.Option
	if cfg.RedisAddr != "" {
		// As cmd/worker: with a shared cache, the fleet lock is on.
		qopts = append(qopts, queue.WithFleetLock(cache, cfg.LockWait))
	}
	reg := registry.New(append([]registry.Option{registry.WithUserAgent("regcap/test")}, cfg.RegistryOpts...)...)
	w := queue.New(nc, handlers.NewFetcher(reg), cache, append(append(qopts, queue.WithLogger(log)), cfg.QueueOpts...)...)
	Must(t, w.Start(), "starting worker")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = w.Shutdown(ctx)
	})
	return &Worker{Worker: w, Conn: nc, Cache: cache, Log: log}
}

// Client returns a fleet client on its own connection.
func Client(t testing.TB, natsURL string, opts ...client.Option) *client.Client {
	t.Helper()
	return client.New(Connect(t, natsURL), append([]client.Option{client.WithTimeout(30 * time.Second)}, opts...)...)
}
