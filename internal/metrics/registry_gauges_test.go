package metrics_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/metrics"
)

// TestRegistryGauges: the per-registry gauges show each host's queue
// depth, fetches in flight, limit and circuit state as read at scrape
// time, and hosts past the label bound are summed under "other".
func TestRegistryGauges(t *testing.T) {
	m := metrics.New()
	if body := scrape(t, m); strings.Contains(body, "regcap_registry_queued{") {
		t.Fatal("per-registry gauges before WatchRegistries")
	}
	states := []metrics.RegistryState{
		{Host: "sick.example", Queued: 7, InFlight: 1, Limit: 1, Open: true},
		{Host: "ok.example", Queued: 2, InFlight: 2, Limit: 16},
	}
	for i := range 150 {
		states = append(states, metrics.RegistryState{Host: fmt.Sprintf("h%d.invalid", i), Queued: 1})
	}
	m.WatchRegistries(func() []metrics.RegistryState { return states })
	body := scrape(t, m)
	for _, want := range []string{
		`regcap_registry_queued{registry="sick.example"} 7`,
		`regcap_registry_fetches_inflight{registry="sick.example"} 1`,
		`regcap_registry_fetch_limit{registry="sick.example"} 1`,
		`regcap_registry_circuit_open{registry="sick.example"} 1`,
		`regcap_registry_queued{registry="ok.example"} 2`,
		`regcap_registry_fetch_limit{registry="ok.example"} 16`,
		`regcap_registry_circuit_open{registry="ok.example"} 0`,
		`regcap_registry_queued{registry="other"} 52`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if n := strings.Count(body, "regcap_registry_queued{"); n != 101 {
		t.Errorf("%d registry series, want 100 hosts and other", n)
	}
}
