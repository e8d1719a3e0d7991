package metrics

import (
	"strconv"
	"strings"
	"testing"
)

// gathered returns name{label=value,… in label order} → value for every
// series of the metric families named with prefix.
func gathered(t *testing.T, m *Metrics, prefix string) map[string]float64 {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), prefix) {
			continue
		}
		for _, s := range f.GetMetric() {
			var l []string
			for _, p := range s.GetLabel() {
				l = append(l, p.GetName()+"="+p.GetValue())
			}
			v := s.GetGauge().GetValue() + s.GetCounter().GetValue()
			out[f.GetName()+"{"+strings.Join(l, ",")+"}"] = v
		}
	}
	return out
}

func TestEndpointMetrics(t *testing.T) {
	m := New()
	e := m.NewEndpoints()
	e.Fetch("docker.io", "registry-1.docker.io", false, true, "100;w=21600", "76;w=21600", "")
	e.Fetch("docker.io", "mirror.internal", true, false, "", "", "30")
	e.Fetch("docker.io", "mirror.internal", true, true, "garbage", "-1", "soon")
	got := gathered(t, m, "regcap_")
	for k, want := range map[string]float64{
		"regcap_registry_ratelimit_limit{endpoint=upstream,registry=docker.io}":                    100,
		"regcap_registry_ratelimit_remaining{endpoint=upstream,registry=docker.io}":                76,
		"regcap_registry_retry_after_seconds{endpoint=mirror.internal,registry=docker.io}":         30,
		"regcap_endpoint_fetches_total{endpoint=mirror.internal,outcome=error,registry=docker.io}": 1,
		"regcap_endpoint_fetches_total{endpoint=mirror.internal,outcome=ok,registry=docker.io}":    1,
		"regcap_endpoint_fetches_total{endpoint=upstream,outcome=ok,registry=docker.io}":           1,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	// Malformed headers set nothing.
	if _, ok := got["regcap_registry_ratelimit_limit{endpoint=mirror.internal,registry=docker.io}"]; ok {
		t.Error("a malformed ratelimit-limit was exported")
	}
	// The endpoint label is bounded.
	for i := range 150 {
		e.Fetch("docker.io", "m"+strconv.Itoa(i), true, true, "", "", "")
	}
	n := 0
	for k := range gathered(t, m, "regcap_endpoint_fetches_total") {
		_ = k
		n++
	}
	if n > maxRegistryLabels+3 {
		t.Errorf("%d fetch series after 150 mirror hosts", n)
	}
}
