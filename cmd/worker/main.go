// Command worker answers the kubewarden/oci registry capabilities for a
// fleet of policy hosts over NATS, with a cache shared through Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/regcap/regcap/internal/discovery"
	"github.com/regcap/regcap/internal/flagenv"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/metrics"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/registry"
)

// version is set at link time (-ldflags "-X main.version=…").
var version = "dev"

var envOverrides = map[string]string{"nats-url": "NATS_URL", "redis-url": "REDIS_URL"}

type config struct {
	natsURL, redisURL        string
	embeddedNATS             string
	prefix, queueGroup       string
	platform                 string
	fetchTimeout, cacheTTL   time.Duration
	immutableTTL, drainLimit time.Duration
	lockWait                 time.Duration
	probe                    string
	memorySize               uint64
	concurrency, maxPending  int
	metricsAddr              string
	logLevel, logFormat      string
	manifestLimit, blobLimit int64
	dockerConfig, sources    string
	denyCIDRs, allowRegs     string
}

func parse(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flags(c, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if err := flagenv.Apply(fs, "REGCAP_", envOverrides, nil); err != nil {
		return nil, err
	}
	if _, err := handlers.ParsePlatform(c.platform); err != nil {
		return nil, fmt.Errorf("--platform: %w", err)
	}
	return c, nil
}

// flags declares every worker flag, bound to c.
func flags(c *config, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.natsURL, "nats-url", "", "NATS server URL(s), comma-separated; empty starts an embedded server on --embedded-nats-addr")
	fs.StringVar(&c.embeddedNATS, "embedded-nats-addr", "127.0.0.1:4222", "listen address of the embedded NATS server used when --nats-url is empty")
	fs.StringVar(&c.redisURL, "redis-url", "", "Redis URL (redis://[:password@]host:port/db); empty uses an in-process cache that is not shared")
	fs.StringVar(&c.prefix, "subject-prefix", "kubewarden", "subject prefix: subjects are <prefix>.oci.v1.<function>")
	fs.StringVar(&c.queueGroup, "queue-group", "regcap", "NATS queue group shared by the fleet's workers")
	fs.StringVar(&c.platform, "platform", handlers.FormatPlatform(handlers.DefaultPlatform()), "platform os/arch[/variant] that indexes resolve to for oci_manifest_config")
	fs.DurationVar(&c.fetchTimeout, "fetch-timeout", 10*time.Second, "deadline of one upstream fetch; past it the answer is 504")
	fs.DurationVar(&c.cacheTTL, "cache-ttl", time.Minute, "how long an answer is cached, counted from its fetch")
	fs.DurationVar(&c.immutableTTL, "immutable-ttl", 0, "cache TTL for digest references, whose answer cannot change (0: same as --cache-ttl)")
	fs.DurationVar(&c.lockWait, "lock-wait", 0, "with Redis, how long to wait for another worker's fetch of the same key before fetching here (0: --fetch-timeout)")
	fs.Uint64Var(&c.memorySize, "memory-cache-size", rediscache.DefaultMemorySize, "bytes of answers kept in this worker's memory tier; 0 disables it (every hit then asks Redis)")
	fs.IntVar(&c.concurrency, "concurrency", 64, "upstream fetches run at once")
	fs.IntVar(&c.maxPending, "max-pending", 1024, "requests waiting on Redis or a fetch; past it the answer is 503")
	fs.DurationVar(&c.drainLimit, "shutdown-timeout", 25*time.Second, "on SIGTERM, how long to wait for requests in flight before cancelling them (keep it under the pod's terminationGracePeriodSeconds)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":9090", "listen address for /metrics, /healthz and /readyz; empty disables")
	fs.StringVar(&c.probe, "probe", "", "check a URL (e.g. http://127.0.0.1:9090/readyz) and exit 0 if it answers 200: a container healthcheck for images without curl")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or console")
	fs.Int64Var(&c.manifestLimit, "max-manifest-size", registry.DefaultManifestLimit, "largest manifest accepted, in bytes; larger is 413")
	fs.Int64Var(&c.blobLimit, "max-config-size", registry.DefaultBlobLimit, "largest config blob accepted, in bytes; larger is 413")
	fs.StringVar(&c.dockerConfig, "docker-config", "", "Docker config with registry credentials: a config.json, a .dockerconfigjson pull secret, or the folder holding one; re-read when it changes (default: $DOCKER_CONFIG/config.json, then ~/.docker/config.json)")
	fs.StringVar(&c.sources, "sources", "", "Kubewarden sources.yaml (or JSON): insecure_sources and source_authorities")
	fs.StringVar(&c.denyCIDRs, "deny-cidrs", strings.Join(registry.DefaultDenyCIDRs(), ","), "networks never connected to, checked on the resolved address at dial time; replaces the default list (empty: deny nothing)")
	fs.StringVar(&c.allowRegs, "allow-registries", "", "comma-separated globs of the only registries that may be asked (e.g. ghcr.io,*.example.com,registry.local:5000); empty allows all")
	fs.Usage = flagenv.Usage(fs, "Usage: worker [flags]\n\nAnswers kubewarden/oci registry capabilities over NATS for a fleet of policy hosts.", "REGCAP_", envOverrides)
	return fs
}

// newLogger logs to w at level, as JSON or for the console. Both formats
// keep production behaviour (stack traces on errors only, not on every
// warning, and no sampling); console only changes the encoding.
func newLogger(level, format string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	case "console":
		enc = zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	default:
		return nil, fmt.Errorf("--log-format %q: want json or console", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)
	return zap.New(core, zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel)), nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "worker:", err)
		return 2
	}
	if cfg.probe != "" {
		return probe(ctx, cfg.probe, stderr)
	}
	log, err := newLogger(cfg.logLevel, cfg.logFormat, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "worker:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("worker stopped", zap.Error(err))
		return 1
	}
	return 0
}

func serve(ctx context.Context, cfg *config, log *zap.Logger) error {
	platform, err := handlers.ParsePlatform(cfg.platform)
	if err != nil {
		return fmt.Errorf("--platform: %w", err)
	}
	natsURL := cfg.natsURL
	if natsURL == "" {
		ns, err := startEmbeddedNATS(cfg.embeddedNATS)
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		natsURL = ns.ClientURL()
		log.Warn("NATS_URL not set: started an embedded NATS server; only clients of this host can reach it",
			zap.String("url", natsURL))
	}

	m := metrics.New()
	cacheOpts := []rediscache.Option{rediscache.WithLogger(log.Named("cache")), rediscache.WithErrorHook(m.RedisError)}
	if cfg.redisURL != "" {
		rdb, err := rediscache.NewClient(cfg.redisURL)
		if err != nil {
			return fmt.Errorf("--redis-url: %w", err)
		}
		defer rdb.Close()
		// go-redis logs every failed dial through a global logger; the
		// cache reports outages once, so its lines go to debug.
		redis.SetLogger(redisLog{log.Named("redis")})
		cacheOpts = append(cacheOpts, rediscache.WithRedis(rdb))
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := rdb.Ping(pctx).Err(); err != nil {
			log.Warn("redis not reachable at start-up: serving from memory and registries until it is", zap.String("addr", rdb.Options().Addr), zap.Error(err))
		} else {
			log.Info("sharing the cache through redis", zap.String("addr", rdb.Options().Addr))
		}
		cancel()
	} else if cfg.memorySize == 0 {
		log.Warn("REDIS_URL not set and --memory-cache-size 0: nothing is cached, every request goes to the registry")
	} else {
		log.Warn("REDIS_URL not set: using an in-process cache that is not shared with other workers")
	}
	cache := rediscache.New(cfg.memorySize, cacheOpts...)
	defer cache.Close()

	acc, err := newAccess(cfg, log.Named("registry"))
	if err != nil {
		return err
	}
	reg := registry.New(append(acc.options(),
		registry.WithUserAgent("regcap/"+version),
		registry.WithLimits(cfg.manifestLimit, cfg.blobLimit),
		// Counts and times every HTTP request to a registry.
		registry.WithBaseTransport(m.WrapBase(acc.transports.For)),
	)...)

	nc, err := nats.Connect(natsURL,
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
		}),
	)
	if err != nil {
		return fmt.Errorf("connecting to NATS: %w", err)
	}
	defer nc.Close()

	// `nats micro ls/info/stats` see the worker; the subjects stay ours.
	disc, err := discovery.Start(nc, discovery.Config{Version: version, Prefix: cfg.prefix, QueueGroup: cfg.queueGroup,
		Description: "kubewarden/oci registry capabilities for a fleet of policy hosts"})
	if err != nil {
		return err
	}
	defer disc.Stop()

	qopts := []queue.Option{
		queue.WithSubjectPrefix(cfg.prefix),
		queue.WithQueueGroup(cfg.queueGroup),
		queue.WithPlatform(platform),
		queue.WithFetchTimeout(cfg.fetchTimeout),
		queue.WithTTL(cfg.cacheTTL, cfg.immutableTTL),
		queue.WithConcurrency(cfg.concurrency),
		queue.WithMaxPending(cfg.maxPending),
		queue.WithLogger(log.Named("queue")),
		queue.WithObserver(observers{m, disc}),
	}
	if cache.Shared() {
		// One fetch per key across the fleet, not one per worker.
		qopts = append(qopts, queue.WithFleetLock(cache, cfg.lockWait))
	}
	w := queue.New(nc, handlers.NewFetcher(reg), cache, qopts...)
	// The fetch pool gauges read the worker at every scrape.
	m.WatchPool(w)
	if err := w.Start(); err != nil {
		return err
	}

	var srv *http.Server
	if cfg.metricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		srv = &http.Server{Handler: probes(nc, m.Handler()), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener stopped", zap.Error(err))
			}
		}()
		log.Info("serving /metrics, /healthz and /readyz", zap.String("addr", ln.Addr().String()))
	}

	log.Info("worker started",
		zap.String("version", version),
		zap.Strings("subjects", w.Subjects()),
		zap.String("queue_group", cfg.queueGroup),
		zap.String("platform", cfg.platform),
		zap.Bool("shared_cache", cache.Shared()),
		zap.Duration("cache_ttl", cfg.cacheTTL),
		zap.Int("concurrency", cfg.concurrency))

	<-ctx.Done()
	log.Info("stopping: draining subscriptions and answering requests in flight")
	disc.Stop()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.drainLimit)
	defer cancel()
	err = w.Shutdown(sctx)
	if srv != nil {
		_ = srv.Shutdown(sctx)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// redisLog sends go-redis's internal log lines to zap at debug level.
type redisLog struct{ log *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}

func startEmbeddedNATS(addr string) (*natsserver.Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--embedded-nats-addr: %w", err)
	}
	var p int
	if _, err := fmt.Sscan(port, &p); err != nil {
		return nil, fmt.Errorf("--embedded-nats-addr: bad port %q", port)
	}
	ns, err := natsserver.NewServer(&natsserver.Options{Host: host, Port: p, NoSigs: true, NoLog: true})
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

func probes(nc *nats.Conn, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !nc.IsConnected() {
			http.Error(w, "NATS not connected", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// probe is the container healthcheck: distroless images have no curl.
func probe(ctx context.Context, url string, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(stderr, "worker: --probe:", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "worker: --probe:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "worker: --probe:", url, resp.Status)
		return 1
	}
	return 0
}

// observers hands every request outcome to each of its members.
type observers []queue.Observer

func (o observers) Request(fn handlers.Function, code int, cache string, elapsed time.Duration) {
	for _, x := range o {
		x.Request(fn, code, cache, elapsed)
	}
}
