// Package metrics provides regcap's Prometheus metrics: requests by
// function and code, cache outcomes, upstream registry requests and
// latency, the fetch pool, Redis errors and NATS reconnects. Each Metrics
// has its own registry, so that tests and several workers in one process
// never share counters.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/telemetry"
)

// FetchPool is the worker's fetch pool as the pool gauges see it;
// *resolve.Resolver implements it. It is read at scrape time, so the gauges
// are never older than the scrape: a value pushed on some events only
// (a slot taken or released) goes stale as soon as the count changes
// without one, e.g. when the requests sharing a fetch are answered.
type FetchPool interface {
	// FetchPool returns the fetch slots in use and the requests taken
	// beyond the memory tier that hold none.
	FetchPool() (inFlight, queued int)
}

// maxRegistryLabels bounds the distinct values of the registry label of
// the upstream metrics. The host comes from the image reference of a
// request, and any NATS client may send one naming any host (x1.invalid,
// x2.invalid, …, a fetch that fails is still counted): unbounded, every
// new host would add series to each upstream vector (method × status,
// and a histogram's buckets) in the worker and in Prometheus, for ever. A
// fleet asks a handful of registries, so the first hosts seen keep their
// name and the rest share "other". --allow-registries bounds the hosts
// that are really fetched from; this bounds what is counted either way.
const maxRegistryLabels = 100

// otherRegistry is the registry label past maxRegistryLabels hosts.
const otherRegistry = "other"

// registryLabels hands out registry label values, at most
// maxRegistryLabels distinct hosts; later ones are "other".
type registryLabels struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

func (l *registryLabels) label(host string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[host]; ok {
		return host
	}
	if len(l.seen) >= maxRegistryLabels {
		return otherRegistry
	}
	if l.seen == nil {
		l.seen = map[string]struct{}{}
	}
	l.seen[host] = struct{}{}
	return host
}

// poolRef holds the FetchPool the gauges read.
type poolRef struct{ p FetchPool }

// Metrics holds the worker's collectors. It implements queue.Observer.
type Metrics struct {
	reg *prometheus.Registry

	pool       atomic.Pointer[poolRef]
	redisUp    atomic.Pointer[func() bool]
	registries registryLabels

	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	cache           *prometheus.CounterVec
	upstream        *prometheus.CounterVec
	upstreamLatency *prometheus.HistogramVec
	inflight        prometheus.GaugeFunc
	queued          prometheus.GaugeFunc
	redisErrors     *prometheus.CounterVec
	redisRejected   *prometheus.CounterVec
	redisRefused    *prometheus.CounterVec
	refreshes       prometheus.Counter
	negativeHits    prometheus.Counter
	natsReconnects  prometheus.Counter
	perRegistry     *registriesCollector
}

// New returns Metrics registered, with the Go runtime and process
// collectors (go_goroutines among them), on a registry of their own.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcap_requests_total",
			Help: "Requests answered, by function and code (200 for a successful answer, else the Nats-Service-Error-Code).",
		}, []string{"function", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "regcap_request_duration_seconds",
			Help:    "Time from taking a request to answering it, by function.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"function"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcap_cache_total",
			Help: "Successful answers by Regcap-Cache outcome: hit (memory or Redis), miss (fetched for this request), shared (another request's or worker's fetch), stale (past its TTL, served because the registry failed).",
		}, []string{"result"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcap_upstream_requests_total",
			Help: "HTTP requests to registries, by registry host (the first 100 hosts by name, \"other\" for the rest; \"blob-storage\" for redirects to other hosts, \"auth\" for token endpoints on other hosts), method and status (the HTTP status, or \"error\" when no answer came).",
		}, []string{"registry", "method", "status"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "regcap_upstream_request_duration_seconds",
			Help:    "Latency of HTTP requests to registries, to the response headers, by registry host (the first 100 hosts by name, \"other\" for the rest; \"blob-storage\" for redirects to other hosts, \"auth\" for token endpoints on other hosts) and method.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"registry", "method"}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcap_redis_errors_total",
			Help: "Failed Redis commands, by operation; each one was absorbed (served from memory or the registry).",
		}, []string{"op"}),
		redisRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcap_redis_rejected_total",
			Help: "Values and fleet-lock notices read from Redis and refused, by reason (short, version, checksum, unsigned, signature, too_large, wrong_type, no_ttl, expired; notice_too_large, notice_malformed, notice_unsigned, notice_signature, notice_code, notice_date): a value is answered as a miss and overwritten by the fetch, a notice is ignored.",
		}, []string{"reason"}),
		redisRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcap_redis_refused_total",
			Help: "Writes Redis answered with an error, by operation (set, backoff, lock, unlock) and reason (oom, readonly, misconf, noperm, other): Redis is up but refuses to store; reads go on, and answers come from the registry and memory.",
		}, []string{"op", "reason"}),
		refreshes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regcap_refreshes_total",
			Help: "Background refreshes of hot keys ahead of their expiry (--refresh-ahead) that went to the registry.",
		}),
		negativeHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regcap_negative_hits_total",
			Help: "404 answers served from the cache (--negative-ttl), without asking the registry.",
		}),
		natsReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regcap_nats_reconnects_total",
			Help: "Reconnections to NATS.",
		}),
	}
	// Read at scrape time from the pool WatchPool names.
	m.inflight = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "regcap_fetch_inflight",
		Help: "Fetch slots in use (at most --concurrency), read at scrape time.",
	}, func() float64 { n, _ := m.poolNow(); return float64(n) })
	m.queued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "regcap_fetch_queued",
		Help: "Requests taken beyond the memory tier and not holding a fetch slot: waiting on Redis, a slot, or another fetch (bounded by --max-pending), read at scrape time.",
	}, func() float64 { _, n := m.poolNow(); return float64(n) })
	redisAvailable := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "regcap_redis_available",
		Help: "1 while Redis answers (or the worker has none), 0 during an outage, when answers come from memory and registries; read at scrape time.",
	}, func() float64 {
		if f := m.redisUp.Load(); f != nil && !(*f)() {
			return 0
		}
		return 1
	})
	m.perRegistry = newRegistriesCollector(m)
	m.reg.MustRegister(redisAvailable, m.perRegistry)
	m.reg.MustRegister(m.requests, m.requestDuration, m.cache, m.upstream, m.upstreamLatency,
		m.inflight, m.queued, m.redisErrors, m.redisRejected, m.redisRefused, m.refreshes, m.negativeHits, m.natsReconnects,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the collectors are on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, EnableOpenMetrics: true})
}

// Request counts one answered request (queue.Observer). code is 0 on
// success.
func (m *Metrics) Request(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration) {
	m.request(fn, code, outcome, elapsed, "")
}

// request counts one answered request, its latency linked to traceID
// when there is one.
func (m *Metrics) request(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration, traceID string) {
	f := fn.Name()
	c := "200"
	if code != 0 {
		c = strconv.Itoa(code)
	}
	m.requests.WithLabelValues(f, c).Inc()
	observe(m.requestDuration.WithLabelValues(f), elapsed, traceID)
	if outcome != "" {
		m.cache.WithLabelValues(string(outcome)).Inc()
	}
}

// WatchPool makes the fetch pool gauges read p at every scrape; until it
// is called they read 0.
func (m *Metrics) WatchPool(p FetchPool) { m.pool.Store(&poolRef{p}) }

func (m *Metrics) poolNow() (inFlight, queued int) {
	if r := m.pool.Load(); r != nil {
		return r.p.FetchPool()
	}
	return 0, 0
}

// WatchRedis makes regcap_redis_available read up at every scrape.
func (m *Metrics) WatchRedis(up func() bool) { m.redisUp.Store(&up) }

// RedisError counts a failed Redis command; use it as
// rediscache.WithErrorHook.
func (m *Metrics) RedisError(op string) { m.redisErrors.WithLabelValues(op).Inc() }

// RedisRejected counts a value read from Redis and refused; use it as
// rediscache.WithRejectHook.
func (m *Metrics) RedisRejected(reason string) { m.redisRejected.WithLabelValues(reason).Inc() }

// RedisRefused counts a write Redis refused; use it as
// rediscache.WithRefusedHook.
func (m *Metrics) RedisRefused(op, reason string) { m.redisRefused.WithLabelValues(op, reason).Inc() }

// Refreshed counts a refresh ahead of expiry; use it as
// resolve.WithRefreshHook.
func (m *Metrics) Refreshed() { m.refreshes.Inc() }

// NegativeHit counts a 404 answered from the cache; use it as
// resolve.WithNegativeHook.
func (m *Metrics) NegativeHit() { m.negativeHits.Inc() }

// NATSReconnected counts a NATS reconnection; call it from the
// connection's reconnect handler.
func (m *Metrics) NATSReconnected() { m.natsReconnects.Inc() }

// WrapBase wraps a registry base-transport function (as given to
// registry.WithBaseTransport) so that every HTTP request to a registry,
// retries and token exchanges included, is counted and timed. The
// registry label is the host for the first maxRegistryLabels hosts and
// "other" after them.
func (m *Metrics) WrapBase(base func(host string) http.RoundTripper) func(host string) http.RoundTripper {
	return func(host string) http.RoundTripper {
		return &transport{m: m, next: base(host), registry: host, name: m.registries.label(host)}
	}
}

type transport struct {
	m        *Metrics
	next     http.RoundTripper
	registry string // the registry host the transport was made for
	name     string // its label: the host, or "other"
}

// label is the registry label of r. Redirect targets and token endpoints
// are hosts a registry chooses, so they are not labels of their own: the
// label set stays bounded.
func (t *transport) label(r *http.Request) string {
	switch {
	case r.URL.Host == t.registry:
		return t.name
	case r.Response != nil: // followed a redirect
		return "blob-storage"
	default:
		return "auth"
	}
}

func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	// A redirect to blob storage is counted as blob storage.
	host := t.label(r)
	observe(t.m.upstreamLatency.WithLabelValues(host, r.Method), time.Since(start), telemetry.SampledTraceID(r.Context()))
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	t.m.upstream.WithLabelValues(host, r.Method, status).Inc()
	return resp, err
}
