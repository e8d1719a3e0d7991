package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
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
	MemoryBytes  uint64
	// Quiet drops logs instead of sending them to t.Log.
	Quiet bool
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
	log := zap.NewNop()
	if !cfg.Quiet {
		log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	nc := Connect(t, cfg.NATSURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	copts := append([]rediscache.Option{rediscache.WithLogger(log)}, cfg.CacheOpts...)
	if cfg.RedisAddr != "" {
		rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, DialTimeout: 500 * time.Millisecond,
			ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
		t.Cleanup(func() { _ = rdb.Close() })
		copts = append(copts, rediscache.WithRedis(rdb))
	}
	cache := rediscache.New(cfg.MemoryBytes, copts...)
	reg := registry.New(append([]registry.Option{registry.WithUserAgent("regcap/test")}, cfg.RegistryOpts...)...)
	w := queue.New(nc, handlers.NewFetcher(reg), cache, append([]queue.Option{queue.WithLogger(log)}, cfg.QueueOpts...)...)
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
