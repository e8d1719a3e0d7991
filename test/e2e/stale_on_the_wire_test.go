package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// TestStaleAnswerOnTheWire: a stale answer carries Regcap-Cache: stale
// and Regcap-Age, which the client reads, and metrics count it as stale.
func TestStaleAnswerOnTheWire(t *testing.T) {
	const ttl = 500 * time.Millisecond
	f := startNATSFleet(t, testworker.Config{Config: worker.Config{CacheTTL: ttl, StaleIfError: time.Hour}})
	img := f.reg.PushImage(t, "wire/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("wire/app", "v1")
	natsCall(t, f.cli, contract.OCIManifest, ref)
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	time.Sleep(ttl + time.Second) // Regcap-Age counts whole seconds
	r := natsCall(t, f.cli, contract.OCIManifest, ref)
	if r.Cache != contract.Stale || r.Age < time.Second || string(r.Body) != string(img.Manifest) {
		t.Fatalf("during the outage: %s, age %s, want the last manifest, stale, at least 1s old", r.Cache, r.Age)
	}
	if m := scrapeMetrics(t, f.worker); !strings.Contains(m, `regcap_cache_total{result="stale"} 1`) {
		t.Errorf("stale answer not counted:\n%s", grepLines(m, "regcap_cache_total"))
	}
}
