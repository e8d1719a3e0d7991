package metrics_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/metrics"
)

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

func wantLine(t *testing.T, body, line string) {
	t.Helper()
	if !strings.Contains(body, "\n"+line+"\n") {
		t.Errorf("missing %q in:\n%s", line, body)
	}
}

// TestObserverAndTransport: outcomes and registry traffic become the
// documented series; two Metrics never share counters.
func TestObserverAndTransport(t *testing.T) {
	m := metrics.New()
	m.Request(handlers.ManifestDigest, 0, "hit", time.Millisecond)
	m.Request(handlers.ManifestDigest, 0, "shared", time.Millisecond)
	m.Request(handlers.OCIManifest, 404, "", time.Millisecond)
	m.Pool(3, 7)
	m.RedisError("get")
	m.NATSReconnected()

	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "missing") {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "{}")
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	c := http.Client{Transport: m.WrapBase(func(string) http.RoundTripper { return http.DefaultTransport })(host)}
	for _, path := range []string{"/v2/a/manifests/v1", "/v2/a/manifests/missing"} {
		resp, err := c.Head(reg.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	dead := http.Client{Transport: m.WrapBase(func(string) http.RoundTripper { return http.DefaultTransport })("127.0.0.1:1")}
	if _, err := dead.Get("http://127.0.0.1:1/v2/"); err == nil {
		t.Fatal("want a connection error from port 1")
	}

	body := scrape(t, m)
	for _, l := range []string{
		`regcap_requests_total{code="200",function="manifest_digest"} 2`,
		`regcap_requests_total{code="404",function="oci_manifest"} 1`,
		`regcap_cache_total{result="hit"} 1`,
		`regcap_cache_total{result="shared"} 1`,
		`regcap_fetch_inflight 3`,
		`regcap_fetch_queued 7`,
		`regcap_redis_errors_total{op="get"} 1`,
		`regcap_nats_reconnects_total 1`,
		`regcap_upstream_requests_total{method="HEAD",registry="` + host + `",status="200"} 1`,
		`regcap_upstream_requests_total{method="HEAD",registry="` + host + `",status="404"} 1`,
		`regcap_upstream_requests_total{method="GET",registry="127.0.0.1:1",status="error"} 1`,
		`regcap_upstream_request_duration_seconds_count{method="HEAD",registry="` + host + `"} 2`,
	} {
		wantLine(t, body, l)
	}
	if !strings.Contains(body, "\ngo_goroutines ") {
		t.Error("no go_goroutines: the Go collector is missing")
	}
	if strings.Contains(scrape(t, metrics.New()), "regcap_requests_total{") {
		t.Error("a new Metrics sees another's counters")
	}
}

// Redirect targets are counted as "blob-storage", not by their host, so
// that registries cannot grow the label set.
func TestUpstreamRedirectLabelBounded(t *testing.T) {
	m := metrics.New()
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "{}") }))
	defer storage.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, storage.URL+r.URL.Path+"?sig=x", http.StatusTemporaryRedirect)
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	c := http.Client{Transport: m.WrapBase(func(string) http.RoundTripper { return http.DefaultTransport })(host)}
	resp, err := c.Get(reg.URL + "/v2/a/blobs/sha256:00")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	body := scrape(t, m)
	wantLine(t, body, `regcap_upstream_requests_total{method="GET",registry="`+host+`",status="307"} 1`)
	wantLine(t, body, `regcap_upstream_requests_total{method="GET",registry="blob-storage",status="200"} 1`)
	if strings.Contains(body, strings.TrimPrefix(storage.URL, "http://")) {
		t.Errorf("blob storage's host is a label:\n%s", body)
	}
}
