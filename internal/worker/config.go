package worker

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/flagenv"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/httpfront"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/registry"
)

// Config is everything a worker is built from. Flags fills it for
// cmd/worker; tests fill it directly. Zero values take the defaults that
// Defaults returns.
type Config struct {
	NATSURL          string // comma-separated; "" starts an embedded server
	EmbeddedNATSAddr string
	RedisURL         string // "" keeps the cache in this process
	// RedisMode is single, sentinel or cluster; "" tells from RedisURL.
	RedisMode string
	// CacheKey signs and checks every Redis value (HMAC-SHA256); the
	// fleet shares it from a Secret. "" leaves values unsigned.
	CacheKey string

	SubjectPrefix string
	QueueGroup    string
	Platform      v1.Platform

	FetchTimeout    time.Duration
	CacheTTL        time.Duration
	ImmutableTTL    time.Duration
	StaleIfError    time.Duration // 0: never answer stale
	RefreshAhead    float64       // 0: no refresh ahead of expiry
	TTLJitter       float64       // 0: exact TTLs
	NegativeTTL     time.Duration // 0: 404s are not cached
	LockWait        time.Duration
	ShutdownTimeout time.Duration

	MemorySize  uint64
	Concurrency int
	// ConcurrencyPerRegistry bounds the fetches to any one registry (0: a
	// quarter of Concurrency).
	ConcurrencyPerRegistry int
	MaxPending             int

	MetricsAddr string // "" serves no metrics

	// HTTPAddr serves the HTTP APIs (plain JSON and Gatekeeper external
	// data); "" serves none.
	HTTPAddr    string
	TLSCert     string
	TLSKey      string
	ClientCA    string // requires and verifies client certificates
	HTTPPlain   bool   // plain HTTP, on a loopback HTTPAddr only
	HTTPTimeout time.Duration
	HTTPMaxKeys int
	// The HTTP front's own budget: resolutions in flight, one batch's
	// share of them, and the largest Gatekeeper reply.
	HTTPMaxInFlight      int
	HTTPBatchConcurrency int
	HTTPMaxReplyBytes    int
	// The HTTP listener's own bounds: a slow or idle client is cut off,
	// and past HTTPMaxConns new connections wait in the kernel's backlog.
	HTTPReadHeaderTimeout time.Duration
	HTTPReadTimeout       time.Duration
	HTTPIdleTimeout       time.Duration
	HTTPMaxHeaderBytes    int
	HTTPMaxConns          int

	ManifestLimit int64
	BlobLimit     int64

	DockerConfig string
	Sources      string
	// HostsDir, RegistriesConf and MirrorsOnly configure mirrors
	// (internal/mirrors).
	HostsDir        string
	RegistriesConf  string
	MirrorsOnly     bool
	DenyCIDRs       []string
	AllowRegistries []string

	// Version is announced in the user agent, logs and service discovery.
	Version string
	// Logger receives the worker's logs (default: none).
	Logger *zap.Logger
	// Lookup resolves registry host names (default: the system
	// resolver); tests map names to loopback with it.
	Lookup func(ctx context.Context, host string) ([]string, error)
}

// Defaults returns the configuration of a worker given no flags.
func Defaults() Config {
	return Config{
		EmbeddedNATSAddr: "127.0.0.1:4222",
		SubjectPrefix:    contract.DefaultSubjectPrefix,
		QueueGroup:       contract.DefaultQueueGroup,
		Platform:         handlers.DefaultPlatform(),
		FetchTimeout:     10 * time.Second,
		CacheTTL:         time.Minute,
		StaleIfError:     time.Hour,
		RefreshAhead:     0.2,
		TTLJitter:        0.1,
		ShutdownTimeout:  25 * time.Second,
		MemorySize:       rediscache.DefaultMemorySize,
		Concurrency:      64,
		MaxPending:       1024,
		MetricsAddr:      ":9090",
		HTTPTimeout:      2 * time.Second,
		HTTPMaxKeys:      1024,

		HTTPMaxInFlight:       httpfront.DefaultMaxInFlight,
		HTTPBatchConcurrency:  httpfront.DefaultBatchConcurrency,
		HTTPMaxReplyBytes:     httpfront.DefaultMaxReplyBytes,
		HTTPReadHeaderTimeout: 5 * time.Second,
		HTTPReadTimeout:       10 * time.Second,
		HTTPIdleTimeout:       time.Minute,
		HTTPMaxHeaderBytes:    16 << 10,
		HTTPMaxConns:          512,
		ManifestLimit:         registry.DefaultManifestLimit,
		BlobLimit:             registry.DefaultBlobLimit,
		DenyCIDRs:             registry.DefaultDenyCIDRs(),
		Version:               "dev",
	}
}

// EnvOverrides names the variables of the flags that do not follow
// REGCAP_<FLAG>.
var envOverrides = map[string]string{"nats-url": "NATS_URL", "redis-url": "REDIS_URL"}

// EnvName is the environment variable that sets flag f.
func EnvName(f *flag.Flag) string { return flagenv.Name("REGCAP_", f, envOverrides) }

// Flags are the worker's command line: a Config, the log settings and
// the container probe.
type Flags struct {
	Config
	LogLevel  string
	LogFormat string
	// Probe is a URL to check instead of running a worker.
	Probe string
}

// DefaultFlags returns the command line of a worker given no flags.
func DefaultFlags() *Flags {
	return &Flags{Config: Defaults(), LogLevel: "info", LogFormat: "auto"}
}

// FlagSet declares every worker flag, bound to f, which holds the
// defaults.
func FlagSet(f *Flags, output io.Writer) *flag.FlagSet {
	c := &f.Config
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&c.NATSURL, "nats-url", c.NATSURL, "NATS server URL(s), comma-separated; empty starts an embedded server on --embedded-nats-addr")
	fs.StringVar(&c.EmbeddedNATSAddr, "embedded-nats-addr", c.EmbeddedNATSAddr, "listen address of the embedded NATS server used when --nats-url is empty")
	fs.StringVar(&c.RedisURL, "redis-url", c.RedisURL, "Redis URL (redis://[:password@]host:port/db); empty uses an in-process cache that is not shared")
	fs.StringVar(&c.RedisMode, "redis-mode", c.RedisMode, "single, sentinel or cluster; empty tells from --redis-url: a master_name parameter means Sentinel (redis://sentinel:26379?master_name=m&addr=sentinel2:26379), addr parameters a Cluster (redis://node1:6379?addr=node2:6379&addr=node3:6379)")
	fs.StringVar(&c.CacheKey, "cache-key", c.CacheKey, "secret that signs every Redis value (HMAC-SHA256) so that only workers holding it can write answers the fleet accepts; give every worker the same, from a Secret through the environment rather than the command line")
	fs.StringVar(&c.SubjectPrefix, "subject-prefix", c.SubjectPrefix, "subject prefix: subjects are <prefix>.oci.v1.<function>")
	fs.StringVar(&c.QueueGroup, "queue-group", c.QueueGroup, "NATS queue group shared by the fleet's workers")
	fs.Var(platformValue{&c.Platform}, "platform", "platform os/arch[/variant] that indexes resolve to for oci_manifest_config")
	fs.DurationVar(&c.FetchTimeout, "fetch-timeout", c.FetchTimeout, "deadline of one upstream fetch; past it the answer is 504")
	fs.DurationVar(&c.CacheTTL, "cache-ttl", c.CacheTTL, "how long an answer is cached, counted from its fetch")
	fs.DurationVar(&c.ImmutableTTL, "immutable-ttl", c.ImmutableTTL, "cache TTL for digest references, whose answer cannot change (0: same as --cache-ttl)")
	fs.DurationVar(&c.StaleIfError, "stale-if-error", c.StaleIfError, "keep answers this long past their TTL, and answer with one (Regcap-Cache: stale, Regcap-Age) when the registry fails with 429, 5xx, a timeout or is unreachable; never for 401, 403 or 404 (0: never)")
	fs.Float64Var(&c.RefreshAhead, "refresh-ahead", c.RefreshAhead, "a hit in the last fraction of an answer's TTL (0.2: the last 12 s of 60 s) is served at once and starts one background refresh of the key for the fleet, so that hot keys never expire under their callers (0: off)")
	fs.Float64Var(&c.TTLJitter, "ttl-jitter", c.TTLJitter, "spread each TTL by ±this fraction (0.1: ±10 %), so that keys fetched together do not expire together (0: off)")
	fs.DurationVar(&c.NegativeTTL, "negative-ttl", c.NegativeTTL, "cache 404 answers fleet-wide this long, so that a rollout asking for a mistyped tag costs one registry request per period, not one per admission request; a tag pushed meanwhile is found once it is over (0: off)")
	fs.DurationVar(&c.LockWait, "lock-wait", c.LockWait, "with Redis, how long to wait for another worker's fetch of the same key before fetching here (0: --fetch-timeout)")
	fs.Uint64Var(&c.MemorySize, "memory-cache-size", c.MemorySize, "bytes of answers kept in this worker's memory tier; 0 disables it (every hit then asks Redis)")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "upstream fetches run at once")
	fs.IntVar(&c.ConcurrencyPerRegistry, "concurrency-per-registry", c.ConcurrencyPerRegistry, "upstream fetches run at once to any one registry, so that one that hangs cannot hold every slot; past it a fetch waits up to --lock-wait, then is answered 503 (0: a quarter of --concurrency)")
	fs.IntVar(&c.MaxPending, "max-pending", c.MaxPending, "requests waiting on Redis or a fetch; past it the answer is 503")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "on SIGTERM, how long to wait for requests in flight before cancelling them (keep it under the pod's terminationGracePeriodSeconds)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "listen address for /metrics, /healthz and /readyz; empty disables")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "listen address of the HTTP APIs (GET|POST /v1/<function>, and Gatekeeper's POST /gatekeeper/v1/<function|pin>); empty: none")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "certificate (PEM) of the HTTP APIs; re-read when it changes. TLS 1.3 at least")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "private key (PEM) of --tls-cert; re-read when it changes")
	fs.StringVar(&c.ClientCA, "client-ca", c.ClientCA, "CA (PEM) that client certificates of the HTTP APIs must be signed by; empty: no client certificate asked (for Gatekeeper: the CA of its gatekeeper-webhook-server-cert secret)")
	fs.BoolVar(&c.HTTPPlain, "http-plain", c.HTTPPlain, "serve the HTTP APIs over plain HTTP, on a loopback --http-addr only (local use)")
	fs.DurationVar(&c.HTTPTimeout, "http-timeout", c.HTTPTimeout, "longest a Gatekeeper request is answered in; keys unresolved then get an item error, and their fetches fill the cache")
	fs.IntVar(&c.HTTPMaxKeys, "http-max-keys", c.HTTPMaxKeys, "most keys one Gatekeeper request may carry")
	fs.IntVar(&c.HTTPMaxInFlight, "http-max-inflight", c.HTTPMaxInFlight, "the HTTP front's budget: resolutions it started that have not ended, counted until they end even after --http-timeout; past it a request or a batch's key is answered 503 at once")
	fs.IntVar(&c.HTTPBatchConcurrency, "http-batch-concurrency", c.HTTPBatchConcurrency, "one Gatekeeper batch's share of --http-max-inflight: the distinct images it resolves at a time")
	fs.IntVar(&c.HTTPMaxReplyBytes, "http-max-reply-bytes", c.HTTPMaxReplyBytes, "largest Gatekeeper reply, in bytes; keys whose values would take it past this get a 413 item")
	fs.DurationVar(&c.HTTPReadHeaderTimeout, "http-read-header-timeout", c.HTTPReadHeaderTimeout, "longest an HTTP client may take to send a request's headers; a slower one is cut off")
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", c.HTTPReadTimeout, "longest an HTTP client may take to send a whole request, body included; a slower one is cut off")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", c.HTTPIdleTimeout, "longest an idle keep-alive HTTP connection is kept open")
	fs.IntVar(&c.HTTPMaxHeaderBytes, "http-max-header-bytes", c.HTTPMaxHeaderBytes, "largest request headers the HTTP APIs read; larger ones are answered 431")
	fs.IntVar(&c.HTTPMaxConns, "http-max-conns", c.HTTPMaxConns, "most HTTP connections open at once; further ones wait in the kernel's accept backlog until one closes")
	fs.StringVar(&f.Probe, "probe", f.Probe, "check a URL (e.g. http://127.0.0.1:9090/readyz) and exit 0 if it answers 200: a container healthcheck for images without curl")
	fs.StringVar(&f.LogLevel, "log-level", f.LogLevel, "debug, info, warn or error")
	fs.StringVar(&f.LogFormat, "log-format", f.LogFormat, "auto (console on a terminal, JSON otherwise), json or console")
	fs.Int64Var(&c.ManifestLimit, "max-manifest-size", c.ManifestLimit, "largest manifest accepted, in bytes; larger is 413")
	fs.Int64Var(&c.BlobLimit, "max-config-size", c.BlobLimit, "largest config blob accepted, in bytes; larger is 413")
	fs.StringVar(&c.DockerConfig, "docker-config", c.DockerConfig, "Docker config with registry credentials: a config.json, a .dockerconfigjson pull secret, or the folder holding one; re-read when it changes (default: $DOCKER_CONFIG/config.json, then ~/.docker/config.json)")
	fs.StringVar(&c.Sources, "sources", c.Sources, "Kubewarden sources.yaml (or JSON): insecure_sources and source_authorities")
	fs.StringVar(&c.HostsDir, "hosts-dir", c.HostsDir, "containerd hosts directory (its config_path, e.g. /etc/containerd/certs.d): a folder per registry whose hosts.toml lists mirrors, tried in file order before the registry; re-read when it changes")
	fs.StringVar(&c.RegistriesConf, "registries-conf", c.RegistriesConf, "CRI-O/Podman registries.conf (v2), with the registries.conf.d/ beside it: mirrors, location rewriting, blocked prefixes; re-read when they change; wins over --hosts-dir for the registries it names")
	fs.BoolVar(&c.MirrorsOnly, "mirrors-only", c.MirrorsOnly, "air-gapped: never contact a registry itself, only the mirrors --hosts-dir or --registries-conf give it (403 for a registry without one)")
	fs.Var((*listValue)(&c.DenyCIDRs), "deny-cidrs", "networks never connected to, checked on the resolved address at dial time; replaces the default list (empty: deny nothing)")
	fs.Var((*listValue)(&c.AllowRegistries), "allow-registries", "comma-separated globs of the only registries that may be asked (e.g. ghcr.io,*.example.com,registry.local:5000); empty allows all")
	fs.Usage = flagenv.Usage(fs, "Usage: worker [flags]\n\nAnswers kubewarden/oci registry capabilities over NATS for a fleet of policy hosts.", "REGCAP_", envOverrides)
	return fs
}

// ParseFlags reads the command line, then the environment for every flag
// not given on it. On --help it writes the usage to help and returns
// flag.ErrHelp. Otherwise it reads every flag it can and returns the
// Flags with every problem found (each a *flagenv.FlagError), so that
// the caller can report them together with Validate's.
func ParseFlags(args []string, help io.Writer) (*Flags, error) {
	f := DefaultFlags()
	fs := FlagSet(f, io.Discard)
	pos, perr := flagenv.Parse(fs, args)
	if errors.Is(perr, flag.ErrHelp) {
		fs.SetOutput(help)
		fs.Usage()
		return nil, perr
	}
	errs := []error{perr}
	if len(pos) > 0 {
		errs = append(errs, &flagenv.FlagError{Name: strings.Join(pos, " "), Problem: "unexpected argument: the worker takes flags only"})
	}
	errs = append(errs, flagenv.Apply(fs, "REGCAP_", envOverrides, nil))
	return f, errors.Join(errs...)
}

// platformValue is the --platform flag: parsed once, here.
type platformValue struct{ p *v1.Platform }

func (v platformValue) String() string {
	if v.p == nil {
		return ""
	}
	return handlers.FormatPlatform(*v.p)
}

func (v platformValue) Set(s string) error {
	p, err := handlers.ParsePlatform(s)
	if err != nil {
		var ce *contract.Error
		if errors.As(err, &ce) {
			return errors.New(ce.Message)
		}
		return err
	}
	*v.p = p
	return nil
}

// listValue is a comma-separated list flag.
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }

func (l *listValue) Set(s string) error {
	*l = nil
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			*l = append(*l, f)
		}
	}
	return nil
}
