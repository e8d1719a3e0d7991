package metrics_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testworker"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/metrics"
	"github.com/regcap/regcap/internal/testenv"
)

type fixedPool struct{ inFlight, queued int }

func (p fixedPool) FetchPool() (int, int) { return p.inFlight, p.queued }

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
	m.Request(contract.ManifestDigest, 0, contract.Hit, time.Millisecond)
	m.Request(contract.ManifestDigest, 0, contract.Shared, time.Millisecond)
	m.Request(contract.OCIManifest, 404, "", time.Millisecond)
	m.WatchPool(fixedPool{3, 7})
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

// TestPoolGaugesAfterBurst: the fetch pool gauges are read at scrape
// time, so once a burst of identical requests (one fetch, the others
// waiting on it) is answered they read 0, not what they were when the
// fetch slot was last taken or released.
func TestPoolGaugesAfterBurst(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	reg.PushImage(t, "burst/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := reg.Ref("burst/app", "v1")
	// The worker's own metrics, watching its resolver's pool.
	w := testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	m := w.Metrics()
	cli := testenv.Client(t, ns.ClientURL())

	gate := reg.Hold("/manifests/v1")
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := cli.Image(context.Background(), contract.ManifestDigest, ref)
			errs <- err
		}()
	}
	testenv.Eventually(t, "all requests pending", func() bool { return w.Pending() == n })
	// The leader holds its slot once its request reached the registry.
	<-gate.Arrived()
	// One fetch holds a slot; the others share it.
	body := scrape(t, m)
	wantLine(t, body, "regcap_fetch_inflight 1")
	wantLine(t, body, fmt.Sprintf("regcap_fetch_queued %d", n-1))
	gate.Release()
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("request failed: %v", err)
		}
	}
	// Answered is not yet out of the pending count: the reply is sent
	// just before the request leaves it.
	testenv.Eventually(t, "no request pending", func() bool { return w.Pending() == 0 })
	body = scrape(t, m)
	wantLine(t, body, "regcap_fetch_inflight 0")
	wantLine(t, body, "regcap_fetch_queued 0")
}

// TestRegistryLabelBounded: any NATS client can name any registry host,
// so the registry label keeps the first 100 hosts' names and counts the
// rest as "other"; a host seen early keeps its name later.
func TestRegistryLabelBounded(t *testing.T) {
	m := metrics.New()
	// No network: the base transport answers every request itself.
	wrap := m.WrapBase(func(string) http.RoundTripper { return answer200{} })
	get := func(host string) {
		t.Helper()
		c := http.Client{Transport: wrap(host)}
		resp, err := c.Head("http://" + host + "/v2/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	const hosts = 250
	for i := range hosts {
		get(fmt.Sprintf("x%d.invalid", i))
	}
	get("x0.invalid") // an early host after the limit
	get("x249.invalid")

	body := scrape(t, m)
	registries := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "regcap_upstream_") {
			continue
		}
		if i := strings.Index(line, `registry="`); i >= 0 {
			v := line[i+len(`registry="`):]
			registries[v[:strings.IndexByte(v, '"')]] = true
		}
	}
	if len(registries) != 101 {
		t.Errorf("%d distinct registry labels, want 101 (100 hosts and \"other\")", len(registries))
	}
	wantLine(t, body, `regcap_upstream_requests_total{method="HEAD",registry="x0.invalid",status="200"} 2`)
	wantLine(t, body, `regcap_upstream_requests_total{method="HEAD",registry="x99.invalid",status="200"} 1`)
	wantLine(t, body, fmt.Sprintf(`regcap_upstream_requests_total{method="HEAD",registry="other",status="200"} %d`, hosts-100+1))
	if registries["x100.invalid"] || registries["x249.invalid"] {
		t.Error("a host past the first 100 has a label of its own")
	}
}

type answer200 struct{}

func (answer200) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
}
