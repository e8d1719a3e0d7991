// Package worker builds a regcap worker from its configuration: the
// registry access, the cache tiers and the resolver, the NATS connection
// (or an embedded server), the NATS front, service discovery, metrics and
// the probe endpoints. cmd/worker and the tests build workers the same
// way, through New.
package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/discovery"
	"github.com/regcap/regcap/internal/httpfront"
	"github.com/regcap/regcap/internal/metrics"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/resolve"
)

// Worker is a running worker. Stop it with Shutdown.
type Worker struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics.Metrics

	embedded *natsserver.Server // nil with an external NATS
	nc       *nats.Conn
	rdb      redis.UniversalClient // nil without Redis
	res      *resolve.Resolver
	front    *queue.Server
	disc     *discovery.Service
	http     *http.Server // nil without --metrics-addr
	httpAddr string
	natsURL  string
	api      *http.Server // nil without --http-addr
	apiAddr  string

	// serving is set once the NATS front has subscribed: a flush before
	// that would confirm a connection without our subscriptions.
	serving atomic.Bool
	// natsReady is the connection generation (nats.go's Reconnects count)
	// whose subscriptions the server has confirmed, -1 for none: /readyz
	// says 200 only while it is the current one, so a reconnect is not
	// ready until its re-sent subscriptions have been flushed.
	natsReady atomic.Int64
}

// New builds a worker from cfg and starts serving. On error, whatever was
// started is stopped again.
func New(ctx context.Context, cfg Config) (_ *Worker, err error) {
	cfg = cfg.withDefaults()
	log := cfg.Logger
	maxManifest, maxBlob := cfg.ManifestLimit, cfg.BlobLimit
	w := &Worker{cfg: cfg, log: log, metrics: metrics.New()}
	w.natsReady.Store(-1)
	// Not on the named result: a failing return sets that to nil before
	// this runs, and what was started must still be stopped.
	defer func() {
		if err != nil {
			w.close()
		}
	}()

	natsURL := cfg.NATSURL
	if natsURL == "" {
		if w.embedded, err = startEmbeddedNATS(cfg.EmbeddedNATSAddr); err != nil {
			return nil, err
		}
		natsURL = w.embedded.ClientURL()
		log.Warn("NATS_URL not set: started an embedded NATS server; only clients of this host can reach it",
			zap.String("url", natsURL))
	}

	ropts := []resolve.Option{
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
		resolve.WithLogger(log.Named("resolve")),
		resolve.WithRedisErrorHook(w.metrics.RedisError),
		resolve.WithRejectHook(w.metrics.RedisRejected),
	}
	if cfg.CacheKey != "" {
		ropts = append(ropts, resolve.WithCacheKey([]byte(cfg.CacheKey)))
	}
	switch {
	case cfg.RedisURL != "":
		if w.rdb, err = resolve.NewRedisClient(cfg.RedisURL, cfg.RedisMode); err != nil {
			return nil, fmt.Errorf("--redis-url %q: want redis://[user:password@]host:port[/db] or rediss://…: %w", redactURL(cfg.RedisURL), err)
		}
		// go-redis logs every failed dial through a global logger; the
		// resolver reports outages once, so its lines go to debug.
		redis.SetLogger(redisLog{log.Named("redis")})
		// One fetch per key across the fleet, not one per worker.
		ropts = append(ropts, resolve.WithRedis(w.rdb, cfg.LockWait))
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := w.rdb.Ping(pctx).Err(); err != nil {
			log.Warn("redis not reachable at start-up: serving from memory and registries until it is", zap.String("url", redactURL(cfg.RedisURL)), zap.Error(err))
		} else {
			log.Info("sharing the cache through redis", zap.String("url", redactURL(cfg.RedisURL)), zap.Bool("values_signed", cfg.CacheKey != ""))
		}
		cancel()
	case cfg.MemorySize == 0:
		log.Warn("REDIS_URL not set and --memory-cache-size 0: nothing is cached, every request goes to the registry")
	default:
		log.Warn("REDIS_URL not set: using an in-process cache that is not shared with other workers")
	}

	w.natsURL = natsURL
	if w.nc, err = connectNATS(natsURL, log, w.metrics, w.confirmSubscriptions); err != nil {
		return nil, err
	}
	cfg.ManifestLimit, cfg.BlobLimit = fitLimits(w.nc, cfg.ManifestLimit, cfg.BlobLimit, log)

	acc, err := newAccess(&cfg, log.Named("registry"))
	if err != nil {
		return nil, err
	}
	fetcher := handlers.NewFetcher(acc.puller(&cfg, w.metrics.WrapBase), handlers.WithLogger(log.Named("fetch")))
	// The largest answer a worker of the fleet may have stored: an
	// oci_manifest_config reply within the limits (before fitLimits: other
	// workers may have a larger max_payload).
	ropts = append(ropts, resolve.WithMaxAnswer(int(maxManifest+maxBlob)+answerOverhead))
	w.res = resolve.New(fetcher, ropts...)
	// The fetch pool gauges read the resolver at every scrape.
	w.metrics.WatchPool(w.res)
	w.metrics.WatchRedis(w.res.RedisAvailable)

	// `nats micro ls/info/stats` see the worker; the subjects stay ours.
	w.disc, err = discovery.Start(w.nc, discovery.Config{Version: cfg.Version, Prefix: cfg.SubjectPrefix, QueueGroup: cfg.QueueGroup,
		Description: "kubewarden/oci registry capabilities for a fleet of policy hosts"})
	if err != nil {
		return nil, err
	}
	w.front = queue.New(w.nc, w.res,
		queue.WithSubjectPrefix(cfg.SubjectPrefix),
		queue.WithQueueGroup(cfg.QueueGroup),
		queue.WithLogger(log.Named("nats")),
		queue.WithObserver(observers{w.metrics, w.disc}))
	if err := w.front.Start(); err != nil {
		return nil, err
	}
	w.serving.Store(true)
	if w.nc.IsConnected() {
		w.confirmSubscriptions(w.nc)
	}

	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("--metrics-addr %s is taken: another worker is running, or set --metrics-addr (empty disables it)", cfg.MetricsAddr)
		}
		if err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		w.httpAddr = ln.Addr().String()
		w.http = &http.Server{Handler: w.probes(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := w.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener stopped", zap.Error(err))
			}
		}()
		log.Info("serving /metrics, /healthz and /readyz", zap.String("addr", w.httpAddr))
	}

	if cfg.HTTPAddr != "" {
		ln, err := httpListener(&cfg)
		if err != nil {
			return nil, err
		}
		w.apiAddr = ln.Addr().String()
		w.api = &http.Server{ReadHeaderTimeout: 5 * time.Second,
			Handler: httpfront.New(w.res, httpfront.WithTimeout(cfg.HTTPTimeout), httpfront.WithMaxKeys(cfg.HTTPMaxKeys),
				httpfront.WithObserver(w.metrics.Request))}
		go func() {
			if err := w.api.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("HTTP API listener stopped", zap.Error(err))
			}
		}()
		log.Info("serving the HTTP APIs", zap.String("addr", w.apiAddr), zap.Bool("tls", !cfg.HTTPPlain), zap.Bool("client_certificates", cfg.ClientCA != ""))
	}

	log.Info("worker started",
		zap.String("version", cfg.Version),
		zap.Strings("subjects", w.front.Subjects()),
		zap.String("queue_group", cfg.QueueGroup),
		zap.String("platform", handlers.FormatPlatform(cfg.Platform)),
		zap.Bool("shared_cache", w.res.Shared()),
		zap.Duration("cache_ttl", cfg.CacheTTL),
		zap.Int("concurrency", cfg.Concurrency))
	return w, nil
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
	if w.rdb != nil {
		_ = w.rdb.Close()
	}
	if w.embedded != nil {
		w.embedded.Shutdown()
	}
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

// confirmSubscriptions marks the current connection ready once a flush
// shows that the server has the subscriptions nats.go sent it (after a
// reconnect they are re-sent before the handlers run). It runs on
// nats.go's callback goroutine after each (re)connect, and gives up when
// that connection is lost: the next reconnect confirms again.
func (w *Worker) confirmSubscriptions(nc *nats.Conn) {
	if !w.serving.Load() {
		return // New confirms once the front has subscribed
	}
	gen := nc.Stats().Reconnects
	for nc.IsConnected() && nc.Stats().Reconnects == gen {
		err := nc.FlushTimeout(5 * time.Second)
		if err == nil {
			if nc.Stats().Reconnects == gen {
				w.natsReady.Store(int64(gen))
			}
			return
		}
		w.log.Warn("NATS connected but the subscriptions are not confirmed yet; /readyz says 503 until they are", zap.Error(err))
	}
}

// Subjects lists the subjects served.
func (w *Worker) Subjects() []string { return w.front.Subjects() }

func (w *Worker) probes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", w.metrics.Handler())
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(rw, "ok")
	})
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if !w.nc.IsConnected() {
			http.Error(rw, "NATS not connected", http.StatusServiceUnavailable)
			return
		}
		if !w.Ready() {
			http.Error(rw, "NATS reconnected, subscriptions not confirmed yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ok")
	})
	return mux
}

// connectNATS connects to url, a comma-separated list of servers that
// nats.go shuffles and fails over between (the servers of a cluster it
// learns from them too). onConnect runs after every (re)connect, on
// nats.go's callback goroutine.
func connectNATS(url string, log *zap.Logger, m *metrics.Metrics, onConnect func(*nats.Conn)) (*nats.Conn, error) {
	// While NATS is unreachable the worker says so: at start, then at
	// most once every few seconds however fast it retries.
	var lastWarn atomic.Int64
	warnEvery := func() bool {
		now := time.Now().UnixNano()
		last := lastWarn.Load()
		return now-last >= int64(5*time.Second) && lastWarn.CompareAndSwap(last, now)
	}
	nc, err := nats.Connect(url,
		nats.Name("regcap-worker"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() {
				return // our own Close at shutdown, not an outage
			}
			log.Warn("NATS disconnected; reconnecting", zap.Error(err))
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			m.NATSReconnected()
			log.Info("NATS reconnected", zap.String("url", c.ConnectedUrlRedacted()))
			onConnect(c)
		}),
		nats.ConnectHandler(func(c *nats.Conn) {
			log.Info("NATS connected", zap.String("url", c.ConnectedUrlRedacted()))
			onConnect(c)
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if warnEvery() {
				log.Warn("NATS still unreachable; retrying (requests are answered once connected)", zap.Error(err))
			}
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS: %w", err)
	}
	if !nc.IsConnected() {
		warnEvery()
		log.Warn("NATS not reachable at start-up; retrying in the background (requests are answered once connected, /readyz says 503 until then)",
			zap.String("url", redactURL(url)))
	} else {
		log.Info("NATS connected", zap.String("url", nc.ConnectedUrlRedacted()))
	}
	return nc, nil
}

func startEmbeddedNATS(addr string) (*natsserver.Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--embedded-nats-addr: %w", err)
	}
	if err := portFree(addr); err != nil {
		return nil, fmt.Errorf("%s is taken: another worker or nats-server is running; set --embedded-nats-addr or NATS_URL", addr)
	}
	// Port -1 is nats-server's "any free port" (0 is its default, 4222).
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("--embedded-nats-addr: bad port %q", port)
	}
	// max_payload large enough for the largest default answer (a 4 MiB
	// manifest and an 8 MiB config), where nats-server's default is 1 MiB.
	ns, err := natsserver.NewServer(&natsserver.Options{Host: host, Port: p, NoSigs: true, NoLog: true, MaxPayload: EmbeddedMaxPayload})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(5 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start on %s (is the port taken?)", addr)
	}
	return ns, nil
}

// EmbeddedMaxPayload is the max_payload of the embedded NATS server: room
// for the largest answer within the default limits. External servers
// need as much (max_payload: 16MB) for the defaults to fit.
const EmbeddedMaxPayload = 16 << 20

// answerOverhead is what an answer adds to the manifest and config it
// holds (the oci_manifest_config wrapper), with room for the reply's
// headers.
const answerOverhead = 4 << 10

// fitLimits lowers the manifest and config limits so that the largest
// answer fits the NATS server's max_payload, and says so: an answer that
// does not fit could only be answered 413. With no connection yet, the
// limit is unknown: the 413 then covers it.
func fitLimits(nc *nats.Conn, manifest, blob int64, log *zap.Logger) (int64, int64) {
	limit := nc.MaxPayload()
	if limit <= 0 {
		log.Warn("NATS max_payload unknown until connected: an answer larger than it will be answered 413",
			zap.Int64("max_manifest_size", manifest), zap.Int64("max_config_size", blob))
		return manifest, blob
	}
	room := limit - answerOverhead
	if manifest+blob <= room {
		log.Info("NATS max_payload leaves room for the largest answer", zap.Int64("max_payload", limit),
			zap.Int64("max_manifest_size", manifest), zap.Int64("max_config_size", blob))
		return manifest, blob
	}
	// Shared as the defaults share it: a third for the manifest.
	m := min(manifest, max(room/3, 1))
	b := min(blob, max(room-m, 1))
	log.Warn("NATS max_payload is too small for the size limits: lowered them so that every answer fits (raise max_payload on the server to keep them)",
		zap.Int64("max_payload", limit),
		zap.Int64("max_manifest_size", m), zap.Int64("was_max_manifest_size", manifest),
		zap.Int64("max_config_size", b), zap.Int64("was_max_config_size", blob))
	return m, b
}

// portFree reports an error when addr cannot be listened on (port 0 and
// nats-server's -1 always can).
func portFree(addr string) error {
	if strings.HasSuffix(addr, ":-1") || strings.HasSuffix(addr, ":0") {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

// redactURL hides the passwords of a URL, or of a comma-separated list
// of them (NATS_URL), for messages: the user-info password and any query
// parameter naming one (a Sentinel URL's password=…).
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			if strings.ContainsAny(p, "@") || strings.Contains(strings.ToLower(p), "password") {
				parts[i] = "<unparsable URL>" // it may hold a password
			}
			continue
		}
		if q := u.Query(); len(q) > 0 {
			for k := range q {
				if strings.Contains(strings.ToLower(k), "password") {
					q.Set(k, "xxxxx")
				}
			}
			u.RawQuery = q.Encode()
		}
		parts[i] = u.Redacted()
	}
	return strings.Join(parts, ",")
}

// redisLog sends go-redis's internal log lines to zap at debug level.
type redisLog struct{ log *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}

// observers hands every request outcome to each of its members.
type observers []queue.Observer

func (o observers) Request(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration) {
	for _, x := range o {
		x.Request(fn, code, outcome, elapsed)
	}
}
