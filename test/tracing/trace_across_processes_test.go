// Package tracing runs the worker and requester binaries with tracing on,
// an OTLP/HTTP receiver inside the test, and checks the traces they
// export: one trace from the requester through the worker to the
// registry, for a miss, a hit and an error; a traceparent from a plain
// NATS publisher continued; no credential in any span.
package tracing

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// otelEnv is the environment that turns tracing on, exporting to rc.
func otelEnv(rc *receiver, service string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") && !strings.HasPrefix(kv, "REDIS_URL=") {
			env = append(env, kv)
		}
	}
	return append(env, "OTEL_EXPORTER_OTLP_ENDPOINT="+rc.URL, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_SERVICE_NAME="+service, "OTEL_BSP_SCHEDULE_DELAY=50", "OTEL_TRACES_SAMPLER=parentbased_always_on")
}

type fixture struct {
	rc        *receiver
	ns        string
	requester string
	tokens    *testenv.TokenRegistry
	ref       string
	stderr    *testenv.SyncBuffer
	metrics   string // the worker's /metrics URL
}

func start(t *testing.T) *fixture {
	testenv.Long(t, "builds and runs the worker and requester binaries")
	f := &fixture{rc: startReceiver(t), stderr: &testenv.SyncBuffer{}}
	f.tokens = testenv.StartTokenRegistry(t)
	f.tokens.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	f.ref = f.tokens.Host + "/team/app:v1"
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(testenv.TokenUser + ":" + testenv.TokenPass))
	testenv.Must(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, f.tokens.Host, auth)), 0o600), "docker config")

	ns := testenv.StartNATS(t)
	f.ns = ns.ClientURL()
	rd := testenv.StartRedis(t)
	f.requester = testenv.BuildCommand(t, "requester")
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	f.metrics = "http://" + metricsAddr + "/metrics"
	cmd := exec.Command(testenv.BuildCommand(t, "worker"), "--nats-url", f.ns, "--redis-url", rd.URL(),
		"--docker-config", dir, "--deny-cidrs", "", "--metrics-addr", metricsAddr, "--log-format", "json", "--log-level", "debug")
	cmd.Env = otelEnv(f.rc, "regcap-worker")
	cmd.Stderr = f.stderr
	testenv.Must(t, cmd.Start(), "starting worker")
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("worker stderr:\n%s", f.stderr.String())
		}
	})
	cli := client.New(testenv.Connect(t, f.ns), client.WithTimeout(10*time.Second))
	testenv.Eventually(t, "the worker to answer", func() bool {
		_, err := cli.Call(context.Background(), contract.ManifestDigest, []byte(`""`))
		return contract.AsError(err).Code == 400
	})
	return f
}

// exemplarTraces scrapes the worker's /metrics as Prometheus does when it
// wants exemplars, and returns the trace IDs the request latency
// histogram's exemplars name.
func (f *fixture) exemplarTraces(t *testing.T) map[string]bool {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.metrics, nil)
	testenv.Must(t, err, "metrics request")
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
	resp, err := http.DefaultClient.Do(req)
	testenv.Must(t, err, "scraping /metrics")
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	testenv.Must(t, err, "reading /metrics")
	ids := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "regcap_request_duration_seconds_bucket{") {
			continue
		}
		if _, ex, ok := strings.Cut(line, ` # {trace_id="`); ok {
			id, _, _ := strings.Cut(ex, `"`)
			ids[id] = true
		}
	}
	return ids
}

// request runs `requester digest IMAGE` with tracing on and returns the
// trace its call started, once the worker's spans are in too.
func (f *fixture) request(t *testing.T, image string, wantExit int) (traceID string, spans []span) {
	t.Helper()
	before := len(f.rc.all())
	cmd := exec.Command(f.requester, "digest", image, "--nats-url", f.ns)
	cmd.Env = otelEnv(f.rc, "regcap-requester")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != wantExit {
		t.Fatalf("requester digest %s: exit %d (%v), want %d; stderr %s", image, code, err, wantExit, stderr.String())
	}
	// The requester flushed at exit; find its call's span.
	for _, s := range f.rc.all()[before:] {
		if s.Service == "regcap-requester" && s.Name == "send kubewarden.oci.v1.manifest_digest" {
			traceID = s.TraceID
		}
	}
	if traceID == "" {
		t.Fatalf("no requester span received for %s", image)
	}
	// The worker exports in batches, 50 ms apart.
	testenv.Eventually(t, "the worker's spans of trace "+traceID, func() bool {
		for _, s := range f.rc.trace(traceID) {
			if s.Service == "regcap-worker" && strings.HasPrefix(s.Name, "process ") {
				return true
			}
		}
		return false
	})
	time.Sleep(300 * time.Millisecond) // the registry and Redis spans end before the worker's; its batch may lag
	return traceID, f.rc.trace(traceID)
}

func find(spans []span, match func(span) bool) []span {
	var out []span
	for _, s := range spans {
		if match(s) {
			out = append(out, s)
		}
	}
	return out
}

// below reports whether s descends from ancestor in spans.
func below(spans []span, s span, ancestor string) bool {
	byID := map[string]span{}
	for _, x := range spans {
		byID[x.SpanID] = x
	}
	for p := s.Parent; p != ""; p = byID[p].Parent {
		if p == ancestor {
			return true
		}
		if _, ok := byID[p]; !ok {
			return false
		}
	}
	return false
}

// checkTree checks a requester call's trace: the requester's span, the
// worker's front span as its child with the cache outcome, and the
// registry requests below the worker's span (none for a hit).
func checkTree(t *testing.T, name string, spans []span, cache string, registryStatus string) (front span) {
	t.Helper()
	req := find(spans, func(s span) bool { return s.Service == "regcap-requester" })
	fronts := find(spans, func(s span) bool { return s.Service == "regcap-worker" && strings.HasPrefix(s.Name, "process ") })
	if len(req) != 1 || len(fronts) != 1 {
		t.Fatalf("%s: %d requester spans and %d worker front spans, want 1 each:\n%s", name, len(req), len(fronts), tree(spans))
	}
	front = fronts[0]
	if front.Parent != req[0].SpanID {
		t.Errorf("%s: the worker's span's parent is %s, want the requester's span %s", name, front.Parent, req[0].SpanID)
	}
	for k, v := range map[string]string{"messaging.system": "nats", "messaging.destination.name": "kubewarden.oci.v1.manifest_digest", "regcap.function": "manifest_digest"} {
		if front.Attrs[k] != v {
			t.Errorf("%s: front span %s=%q, want %q", name, k, front.Attrs[k], v)
		}
	}
	if cache != "" && front.Attrs["regcap.cache"] != cache {
		t.Errorf("%s: regcap.cache=%q, want %q", name, front.Attrs["regcap.cache"], cache)
	}
	regs := find(spans, func(s span) bool { return s.Attrs["regcap.registry"] != "" && s.Attrs["http.request.method"] != "" })
	for _, r := range regs {
		if !below(spans, r, front.SpanID) {
			t.Errorf("%s: registry request %s %s is not below the worker's span", name, r.Name, r.Attrs["url.full"])
		}
	}
	switch {
	case registryStatus == "" && len(regs) != 0:
		t.Errorf("%s: %d registry requests in a trace that should have none:\n%s", name, len(regs), tree(spans))
	case registryStatus != "" && len(find(regs, func(s span) bool { return s.Attrs["http.response.status_code"] == registryStatus })) == 0:
		t.Errorf("%s: no registry request answered %s below the worker's span:\n%s", name, registryStatus, tree(spans))
	}
	return front
}

// TestOneTraceFromRequesterToRegistry: a miss, a hit and an error each
// make one trace holding the requester's span, the worker's span as its
// child and (miss, error) the registry requests below it.
func TestOneTraceFromRequesterToRegistry(t *testing.T) {
	f := start(t)

	missID, miss := f.request(t, f.ref, 0)
	checkTree(t, "miss", miss, "miss", "200")
	for _, step := range []string{"resolve", "fetch"} {
		if len(find(miss, func(s span) bool { return s.Name == step && s.Service == "regcap-worker" })) != 1 {
			t.Errorf("miss: no %q span:\n%s", step, tree(miss))
		}
	}
	if len(find(miss, func(s span) bool { return s.Attrs["db.system.name"] == "redis" })) == 0 {
		t.Errorf("miss: no Redis command span:\n%s", tree(miss))
	}
	t.Logf("the trace of a miss:\n%s", tree(miss))

	hitID, hit := f.request(t, f.ref, 0)
	checkTree(t, "hit", hit, "hit", "")
	t.Logf("the trace of a hit:\n%s", tree(hit))

	_, failed := f.request(t, f.tokens.Host+"/team/app:nope", 1)
	front := checkTree(t, "error", failed, "", "404")
	if front.Attrs["regcap.error.code"] != "404" {
		t.Errorf("error: front span regcap.error.code=%q, want 404", front.Attrs["regcap.error.code"])
	}
	t.Logf("the trace of an error:\n%s", tree(failed))

	// The latency histogram's exemplars name these traces (each bucket
	// keeps its latest), in the OpenMetrics exposition Prometheus asks for.
	exemplars := f.exemplarTraces(t)
	if !exemplars[missID] && !exemplars[hitID] && !exemplars[front.TraceID] {
		t.Errorf("no exemplar of regcap_request_duration_seconds names trace %s, %s or %s; exemplars: %v", missID, hitID, front.TraceID, exemplars)
	}

	// Logs name the trace of a failed request.
	if !strings.Contains(f.stderr.String(), `"trace_id":"`+front.TraceID+`"`) {
		t.Errorf("the worker's log of the 404 does not carry trace_id %s", front.TraceID)
	}

	// No credential in any span of any trace.
	secrets := append([]string{testenv.TokenPass, base64.StdEncoding.EncodeToString([]byte(testenv.TokenUser + ":" + testenv.TokenPass))}, f.tokens.Issued()...)
	if len(secrets) < 3 {
		t.Fatalf("the registry issued no token: the test proves nothing")
	}
	for _, s := range f.rc.all() {
		text := fmt.Sprint(s.Name, s.Status, s.Attrs)
		for _, sec := range secrets {
			if strings.Contains(text, sec) {
				t.Errorf("span %s [%s] holds the credential %q", s.Name, s.Service, sec)
			}
		}
	}
	if len(f.rc.bad) != 0 {
		t.Errorf("exports the receiver could not decode: %v", f.rc.bad)
	}
}

// TestPlainPublisherTraceparentContinued: a request from a plain NATS
// client (nats.go directly, as another language's would send it) with a
// lowercase traceparent header is continued by the worker: its span is
// in that trace, a child of the given span. Mixed case is read too.
func TestPlainPublisherTraceparentContinued(t *testing.T) {
	f := start(t)
	nc := testenv.Connect(t, f.ns)
	for i, name := range []string{"traceparent", "Traceparent"} {
		traceID := fmt.Sprintf("4bf92f3577b34da6a3ce929d0e0e47%02d", i)
		parent := "00f067aa0ba902b7"
		m := nats.NewMsg("kubewarden.oci.v1.manifest_digest")
		m.Header[name] = []string{"00-" + traceID + "-" + parent + "-01"}
		m.Data = []byte(`"` + f.ref + `"`)
		resp, err := nc.RequestMsg(m, 10*time.Second)
		testenv.Must(t, err, "request")
		if code := resp.Header.Get(contract.HeaderErrorCode); code != "" {
			t.Fatalf("error reply %s: %s", code, resp.Header.Get(contract.HeaderError))
		}
		testenv.Eventually(t, "the worker's span in trace "+traceID, func() bool {
			return len(find(f.rc.trace(traceID), func(s span) bool { return strings.HasPrefix(s.Name, "process ") })) == 1
		})
		front := find(f.rc.trace(traceID), func(s span) bool { return strings.HasPrefix(s.Name, "process ") })[0]
		if front.Parent != parent {
			t.Errorf("header %s: the worker's span's parent is %q, want the publisher's %s", name, front.Parent, parent)
		}
	}
	// Without a traceparent the worker starts a trace of its own.
	before := len(f.rc.all())
	resp, err := nc.Request("kubewarden.oci.v1.manifest_digest", []byte(`"`+f.ref+`"`), 10*time.Second)
	testenv.Must(t, err, "request")
	if resp.Header.Get(contract.HeaderErrorCode) != "" {
		t.Fatalf("error reply: %v", resp.Header)
	}
	testenv.Eventually(t, "a root span for a request without traceparent", func() bool {
		for _, s := range f.rc.all()[before:] {
			if strings.HasPrefix(s.Name, "process ") && s.Parent == "" {
				return true
			}
		}
		return false
	})
}
