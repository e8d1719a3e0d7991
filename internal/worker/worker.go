// Package worker builds a regcap worker from its configuration: the
// registry access, the cache tiers and the resolver, the NATS connection
// (or an embedded server), the NATS front, service discovery, metrics and
// the probe endpoints. cmd/worker and the tests build workers the same
// way, through New.
package worker

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/discovery"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/metrics"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/telemetry"
)

// Worker is a running worker. Stop it with Shutdown.
type Worker struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics.Metrics

	embedded *natsserver.Server // nil with an external NATS
	nc       *nats.Conn
	cache    *rediscache.Cache // nil without Redis
	res      *resolve.Resolver
	front    *queue.Server
	disc     *discovery.Service
	http     *http.Server // nil without --metrics-addr
	httpAddr string
	natsURL  string
	api      *http.Server // nil without --http-addr
	apiAddr  string
	tracing  *telemetry.Provider // off unless OTEL_* configures it

	// serving is set once the NATS front has subscribed: a flush before
	// that would confirm a connection without our subscriptions.
	serving atomic.Bool
	// natsReady is the connection generation (nats.go's Reconnects count)
	// whose subscriptions the server has confirmed, -1 for none: /readyz
	// says 200 only while it is the current one, so a reconnect is not
	// ready until its re-sent subscriptions have been flushed.
	natsReady atomic.Int64
}

// New builds a worker from cfg and starts serving: NATS (or an embedded
// server), the cache tiers, the registry access and the resolver, the
// NATS front and service discovery, then the metrics and HTTP listeners.
// It first checks cfg (Validate: every problem, as *FieldErrors) and that
// its ports are free (a *PortsTakenError). On error, whatever was started
// is stopped again.
func New(ctx context.Context, cfg Config) (_ *Worker, err error) {
	// Every setting is checked before anything is opened: a bad one is
	// never hidden by a port conflict, and all are said at once.
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if err := cfg.checkPorts(); err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, log: cfg.Logger, metrics: metrics.New()}
	w.natsReady.Store(-1)
	// Not on the named result: a failing return sets that to nil before
	// this runs, and what was started must still be stopped.
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if err := w.setupTracing(ctx); err != nil {
		return nil, err
	}
	if err := w.startNATS(); err != nil {
		return nil, err
	}
	if err := w.connectRedis(ctx); err != nil {
		return nil, err
	}
	if err := w.newResolver(); err != nil {
		return nil, err
	}
	if err := w.serveNATS(); err != nil {
		return nil, err
	}
	if err := w.serveMetrics(); err != nil {
		return nil, err
	}
	if err := w.serveAPI(); err != nil {
		return nil, err
	}
	w.log.Info("worker started",
		zap.String("version", cfg.Version),
		zap.Strings("subjects", w.front.Subjects()),
		zap.String("queue_group", cfg.QueueGroup),
		zap.String("platform", handlers.FormatPlatform(cfg.Platform)),
		zap.Bool("shared_cache", w.res.Shared()),
		zap.Duration("cache_ttl", cfg.CacheTTL),
		zap.Int("concurrency", cfg.Concurrency))
	return w, nil
}

// newResolver builds the registry access, the fetch over it and the
// resolver over the cache tiers.
func (w *Worker) newResolver() error {
	cfg := &w.cfg
	checkMaxPayload(w.nc, cfg.ManifestLimit, cfg.BlobLimit, w.log)
	acc, err := newAccess(cfg, w.log.Named("registry"))
	if err != nil {
		return err
	}
	fetcher := handlers.NewFetcher(acc.puller(cfg, w.wrapBase, w.fetchObserver()), handlers.WithLogger(w.log.Named("fetch")))
	opts := []resolve.Option{
		resolve.WithPlatform(cfg.Platform),
		resolve.WithFetchTimeout(cfg.FetchTimeout),
		resolve.WithTTL(cfg.CacheTTL, cfg.ImmutableTTL),
		resolve.WithStaleIfError(cfg.StaleIfError),
		resolve.WithRefreshAhead(cfg.RefreshAhead),
		resolve.WithTTLJitter(cfg.TTLJitter),
		resolve.WithRefreshHook(w.metrics.Refreshed),
		resolve.WithNegativeTTL(cfg.NegativeTTL),
		resolve.WithNegativeHook(w.metrics.NegativeHit),
		resolve.WithConcurrency(cfg.Concurrency, cfg.ConcurrencyPerRegistry),
		resolve.WithMaxPending(cfg.MaxPending),
		resolve.WithMemory(cfg.MemorySize),
		resolve.WithLogger(w.log.Named("resolve")),
		resolve.WithTracerProvider(w.tracing.TracerProvider()),
	}
	if w.cache != nil {
		// One fetch per key across the fleet, not one per worker.
		opts = append(opts, resolve.WithRedis(w.cache, cfg.LockWait))
	}
	w.res = resolve.New(fetcher, opts...)
	// The fetch pool gauges read the resolver at every scrape.
	w.metrics.WatchPool(w.res)
	w.metrics.WatchRedis(w.res.RedisAvailable)
	w.metrics.WatchRegistries(w.registries)
	return nil
}

// registries is the resolver's per-registry state for the metrics.
func (w *Worker) registries() []metrics.RegistryState {
	var out []metrics.RegistryState
	for h, s := range w.res.Registries() {
		out = append(out, metrics.RegistryState{Host: h, Queued: s.Queued, InFlight: s.InFlight, Limit: s.Limit, Open: s.Open})
	}
	return out
}

// serveNATS starts service discovery and the NATS front.
func (w *Worker) serveNATS() (err error) {
	cfg := &w.cfg
	// `nats micro ls/info/stats` see the worker; the subjects stay ours.
	w.disc, err = discovery.Start(w.nc, discovery.Config{Version: cfg.Version, Prefix: cfg.SubjectPrefix, QueueGroup: cfg.QueueGroup,
		Description: "kubewarden/oci registry capabilities for a fleet of policy hosts"})
	if err != nil {
		return err
	}
	w.front = queue.New(w.nc, w.res,
		queue.WithSubjectPrefix(cfg.SubjectPrefix),
		queue.WithQueueGroup(cfg.QueueGroup),
		queue.WithLogger(w.log.Named("nats")),
		queue.WithObserver(observers{w.metrics, w.disc}),
		queue.WithTracerProvider(w.tracing.TracerProvider()))
	if err := w.front.Start(); err != nil {
		return err
	}
	w.serving.Store(true)
	if w.nc.IsConnected() {
		w.confirmSubscriptions(w.nc)
	}
	return nil
}

// withDefaults fills the zero fields of c from Defaults.
func (c Config) withDefaults() Config {
	d := Defaults()
	set := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	set(&c.EmbeddedNATSAddr, d.EmbeddedNATSAddr)
	set(&c.SubjectPrefix, d.SubjectPrefix)
	set(&c.QueueGroup, d.QueueGroup)
	set(&c.Version, d.Version)
	if c.Platform.OS == "" {
		c.Platform = d.Platform
	}
	for _, p := range []struct{ v, def *time.Duration }{
		{&c.FetchTimeout, &d.FetchTimeout}, {&c.CacheTTL, &d.CacheTTL}, {&c.ShutdownTimeout, &d.ShutdownTimeout},
	} {
		if *p.v <= 0 {
			*p.v = *p.def
		}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = d.Concurrency
	}
	if c.HTTPTimeout <= 0 {
		c.HTTPTimeout = d.HTTPTimeout
	}
	if c.HTTPMaxKeys <= 0 {
		c.HTTPMaxKeys = d.HTTPMaxKeys
	}
	for _, p := range []struct{ v, def *time.Duration }{
		{&c.HTTPReadHeaderTimeout, &d.HTTPReadHeaderTimeout}, {&c.HTTPReadTimeout, &d.HTTPReadTimeout}, {&c.HTTPIdleTimeout, &d.HTTPIdleTimeout},
	} {
		if *p.v <= 0 {
			*p.v = *p.def
		}
	}
	for _, p := range []struct{ v, def *int }{
		{&c.HTTPMaxInFlight, &d.HTTPMaxInFlight}, {&c.HTTPBatchConcurrency, &d.HTTPBatchConcurrency}, {&c.HTTPMaxReplyBytes, &d.HTTPMaxReplyBytes},
	} {
		if *p.v <= 0 {
			*p.v = *p.def
		}
	}
	if c.HTTPMaxHeaderBytes <= 0 {
		c.HTTPMaxHeaderBytes = d.HTTPMaxHeaderBytes
	}
	if c.HTTPMaxConns <= 0 {
		c.HTTPMaxConns = d.HTTPMaxConns
	}
	if c.MaxPending <= 0 {
		c.MaxPending = d.MaxPending
	}
	if c.ManifestLimit <= 0 {
		c.ManifestLimit = d.ManifestLimit
	}
	if c.BlobLimit <= 0 {
		c.BlobLimit = d.BlobLimit
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Run serves until ctx ends, then shuts down within the configured
// shutdown timeout. It returns nil after a complete drain, and a
// *ShutdownTimeoutError when the timeout ran out with requests cancelled.
func (w *Worker) Run(ctx context.Context) error {
	<-ctx.Done()
	w.log.Info("stopping: draining subscriptions and answering requests in flight")
	sctx, cancel := context.WithTimeout(context.Background(), w.cfg.ShutdownTimeout)
	defer cancel()
	if err := w.Shutdown(sctx); err != nil {
		return err
	}
	w.log.Info("stopped")
	return nil
}

// ShutdownTimeoutError says that the shutdown timeout ran out before the
// requests in flight were answered: they were cancelled (answered 503).
type ShutdownTimeoutError struct {
	Timeout   time.Duration
	Cancelled int // requests still waiting when it ran out
}

func (e *ShutdownTimeoutError) Error() string {
	return fmt.Sprintf("shutdown timeout (%s) ran out: %d requests in flight were cancelled and answered 503", e.Timeout, e.Cancelled)
}

// Shutdown stops taking requests, answers every request already taken,
// and closes what New opened. If ctx ends first, the requests still
// waiting are answered 503 and a *ShutdownTimeoutError is returned.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.disc.Stop()
	if w.api != nil {
		_ = w.api.Shutdown(ctx)
	}
	err := w.front.Shutdown(ctx)
	if err != nil && ctx.Err() != nil {
		err = &ShutdownTimeoutError{Timeout: w.cfg.ShutdownTimeout, Cancelled: w.front.Cancelled()}
	}
	if w.http != nil {
		_ = w.http.Shutdown(ctx)
	}
	w.close()
	return err
}

// close releases what New opened, in reverse order.
func (w *Worker) close() {
	if w.api != nil {
		_ = w.api.Close()
	}
	if w.http != nil {
		_ = w.http.Close()
	}
	if w.disc != nil {
		w.disc.Stop()
	}
	if w.nc != nil {
		w.nc.Close()
	}
	if w.res != nil {
		w.res.Close()
	}
	if w.cache != nil {
		w.cache.Close()
	}
	if w.embedded != nil {
		w.embedded.Shutdown()
	}
	w.stopTracing()
}

// Resolver is the worker's resolver.
func (w *Worker) Resolver() *resolve.Resolver { return w.res }

// Metrics are the worker's metrics.
func (w *Worker) Metrics() *metrics.Metrics { return w.metrics }

// NATSURL is the NATS URL the worker connected to: the embedded server's
// when Config.NATSURL was empty.
func (w *Worker) NATSURL() string { return w.natsURL }

// DiscoveryID is the worker's service-discovery instance id.
func (w *Worker) DiscoveryID() string { return w.disc.ID() }

// APIAddr is the address the HTTP APIs are served on, "" without them.
func (w *Worker) APIAddr() string { return w.apiAddr }

// MetricsAddr is the address /metrics is served on, "" without one.
func (w *Worker) MetricsAddr() string { return w.httpAddr }

// ConnectedURL is the URL of the NATS server the worker is connected to
// now, password redacted; "" while disconnected.
func (w *Worker) ConnectedURL() string { return w.nc.ConnectedUrlRedacted() }

// Ready reports what /readyz says: connected to NATS, with the
// subscriptions of the current connection confirmed by the server.
func (w *Worker) Ready() bool {
	return w.nc.IsConnected() && w.natsReady.Load() == int64(w.nc.Stats().Reconnects)
}

// Subjects lists the subjects served.
func (w *Worker) Subjects() []string { return w.front.Subjects() }

// observers hands every request outcome to each of its members.
type observers []resolve.Observer

func (o observers) Request(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration) {
	for _, x := range o {
		x.Request(fn, code, outcome, elapsed)
	}
}
