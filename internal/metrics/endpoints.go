package metrics

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regcap/regcap/contract"
)

// upstreamEndpoint is the endpoint label of a fetch served by the
// registry itself rather than a mirror.
const upstreamEndpoint = "upstream"

// Endpoints are the metrics of mirrors and rate limits: which endpoint
// served each fetch, and the rate-limit budget each registry announces.
type Endpoints struct {
	registries *registryLabels
	mirrors    registryLabels

	fetches    *prometheus.CounterVec
	limit      *prometheus.GaugeVec
	remaining  *prometheus.GaugeVec
	retryAfter *prometheus.GaugeVec
	now        func() time.Time
}

// NewEndpoints registers the endpoint metrics on m's registry. Call it
// once per Metrics.
func (m *Metrics) NewEndpoints() *Endpoints {
	e := &Endpoints{
		registries: &m.registries,
		now:        time.Now,
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcap_endpoint_fetches_total",
			Help: "Registry requests by logical registry, endpoint that was asked (a configured mirror host, or \"upstream\" for the registry itself; at most 100 mirror hosts, then \"other\") and outcome (ok or error).",
		}, []string{"registry", "endpoint", "outcome"}),
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regcap_registry_ratelimit_limit",
			Help: "The last ratelimit-limit header a registry's endpoint sent (Docker Hub: pulls allowed per window), by logical registry and endpoint.",
		}, []string{"registry", "endpoint"}),
		remaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regcap_registry_ratelimit_remaining",
			Help: "The last ratelimit-remaining header a registry's endpoint sent (Docker Hub: pulls left in the window), by logical registry and endpoint.",
		}, []string{"registry", "endpoint"}),
		retryAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regcap_registry_retry_after_seconds",
			Help: "The last Retry-After a registry's endpoint sent, in seconds from when it was sent, by logical registry and endpoint.",
		}, []string{"registry", "endpoint"}),
	}
	m.reg.MustRegister(e.fetches, e.limit, e.remaining, e.retryAfter)
	return e
}

// Fetch records one endpoint's answer: registry is the logical registry,
// endpoint the host asked, mirror whether it is not the registry itself;
// limit, remaining and retryAfter are its headers as sent ("" if absent).
func (e *Endpoints) Fetch(registry, endpoint string, mirror, ok bool, limit, remaining, retryAfter string) {
	reg := e.registries.label(registry)
	ep := upstreamEndpoint
	if mirror {
		ep = e.mirrors.label(endpoint)
	}
	outcome := "ok"
	if !ok {
		outcome = "error"
	}
	e.fetches.WithLabelValues(reg, ep, outcome).Inc()
	if v, ok := rateLimitValue(limit); ok {
		e.limit.WithLabelValues(reg, ep).Set(v)
	}
	if v, ok := rateLimitValue(remaining); ok {
		e.remaining.WithLabelValues(reg, ep).Set(v)
	}
	if d, ok := contract.ParseRetryAfter(retryAfter, e.now()); ok {
		e.retryAfter.WithLabelValues(reg, ep).Set(d.Seconds())
	}
}

// rateLimitValue reads "100;w=21600" (Docker Hub's format, the IETF
// RateLimit draft's) as 100.
func rateLimitValue(s string) (float64, bool) {
	if s == "" {
		return 0, false
	}
	n, _, _ := strings.Cut(s, ";")
	v, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
	return v, err == nil && v >= 0
}
