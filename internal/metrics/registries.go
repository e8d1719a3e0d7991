package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// RegistryState is one registry's share of the worker, as the
// per-registry gauges show it.
type RegistryState struct {
	Host string
	// Queued is its resolutions pending, its share of --max-pending.
	Queued int
	// InFlight is its fetches now; Limit how many it may have (its
	// adaptive share of --concurrency).
	InFlight, Limit int
	// Open is true while its circuit is open: its fetches fail at once.
	Open bool
}

// registriesCollector reads the per-registry state at scrape time. Hosts
// past the first maxRegistryLabels share the "other" series, summed (a
// circuit counts as open there if any is).
type registriesCollector struct {
	m      *Metrics
	read   atomic.Pointer[func() []RegistryState]
	queued *prometheus.Desc
	flying *prometheus.Desc
	limit  *prometheus.Desc
	open   *prometheus.Desc
}

func newRegistriesCollector(m *Metrics) *registriesCollector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"registry"}, nil)
	}
	return &registriesCollector{m: m,
		queued: desc("regcap_registry_queued", "Resolutions pending per registry host (requests for one image share one), its share of --max-pending; read at scrape time."),
		flying: desc("regcap_registry_fetches_inflight", "Fetches in flight per registry host; read at scrape time."),
		limit:  desc("regcap_registry_fetch_limit", "Fetches a registry host may have in flight now: grows with its answers up to --concurrency-per-registry, halves with each timeout; read at scrape time."),
		open:   desc("regcap_registry_circuit_open", "1 while a registry host's circuit is open (its fetches timed out again and again and fail at once but for one probe), else 0; read at scrape time."),
	}
}

func (c *registriesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queued
	ch <- c.flying
	ch <- c.limit
	ch <- c.open
}

func (c *registriesCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.read.Load()
	if f == nil {
		return
	}
	sum := map[string]*RegistryState{}
	var order []string
	for _, s := range (*f)() {
		l := c.m.registries.label(s.Host)
		t := sum[l]
		if t == nil {
			t = &RegistryState{}
			sum[l] = t
			order = append(order, l)
		}
		t.Queued += s.Queued
		t.InFlight += s.InFlight
		t.Limit += s.Limit
		t.Open = t.Open || s.Open
	}
	for _, l := range order {
		s := sum[l]
		open := 0.0
		if s.Open {
			open = 1
		}
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(s.Queued), l)
		ch <- prometheus.MustNewConstMetric(c.flying, prometheus.GaugeValue, float64(s.InFlight), l)
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(s.Limit), l)
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, open, l)
	}
}

// WatchRegistries makes the per-registry gauges read f at every scrape;
// until it is called they show nothing.
func (m *Metrics) WatchRegistries(f func() []RegistryState) { m.perRegistry.read.Store(&f) }
