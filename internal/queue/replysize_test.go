package queue_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
)

const smallPayload = 64 << 10

// bigManifest pushes an image manifest of about size bytes (a long
// annotation) and returns its reference and body.
func bigManifest(t *testing.T, reg *testenv.Registry, repo string, size int) (string, []byte) {
	t.Helper()
	img := reg.PushImage(t, repo, "base", testenv.OCIManifest, "linux/amd64")
	body := strings.Replace(string(img.Manifest), "{", `{"annotations": {"padding": "`+strings.Repeat("p", size)+`"},`, 1)
	reg.PushManifest(t, repo, "big", testenv.OCIManifest, []byte(body))
	return reg.Ref(repo, "big"), []byte(body)
}

// TestReplyOverMaxPayload: an answer that does not fit the NATS server's
// max_payload (here one another worker, on a server with a larger one,
// put in the shared Redis) is answered 413, naming the size and the
// limit, and counted as a 413: never dropped for the caller to time out.
func TestReplyOverMaxPayload(t *testing.T) {
	rd := testenv.StartRedis(t)
	big := testenv.StartNATS(t)
	small := testenv.StartNATS(t, testenv.MaxPayload(smallPayload))
	reg := testenv.StartRegistry(t)
	ref, body := bigManifest(t, reg, "huge/app", 200<<10)
	testworker.Start(t, testworker.Config{NATSURL: big.ClientURL(), RedisAddr: rd.Addr()})
	w := testworker.Start(t, testworker.Config{NATSURL: small.ClientURL(), RedisAddr: rd.Addr(), NoMemory: true})

	if r := call(t, testenv.Client(t, big.ClientURL()), contract.OCIManifest, ref); len(r.Body) != len(body) {
		t.Fatalf("on the large server: %d bytes", len(r.Body))
	}
	_, err := testenv.Client(t, small.ClientURL()).Image(context.Background(), contract.OCIManifest, ref)
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 413 || !strings.Contains(ce.Message, fmt.Sprint(smallPayload)) || !strings.Contains(ce.Message, "max_payload") {
		t.Fatalf("on the small server: %v, want 413 naming max_payload %d", err, smallPayload)
	}
	if m := scrape(t, w); !strings.Contains(m, `regcap_requests_total{code="413",function="oci_manifest"} 1`) {
		t.Errorf("the 413 is not what the metrics counted:\n%s", grep(m, "regcap_requests_total"))
	}
}

// TestLimitsFitMaxPayload: a worker on a server whose max_payload cannot
// hold answers within the size limits lowers the limits, and says so:
// a manifest over the lowered limit is refused (413) before it is read
// whole, not fetched and then dropped.
func TestLimitsFitMaxPayload(t *testing.T) {
	small := testenv.StartNATS(t, testenv.MaxPayload(smallPayload))
	reg := testenv.StartRegistry(t)
	core, logs := observer.New(zap.InfoLevel)
	testworker.Start(t, testworker.Config{NATSURL: small.ClientURL(), Logger: zap.New(core)})
	lines := logs.FilterMessageSnippet("lowered them").All()
	if len(lines) != 1 || lines[0].ContextMap()["max_payload"] != int64(smallPayload) {
		t.Fatalf("lowering not logged once with the max_payload: %v", lines)
	}
	limit := lines[0].ContextMap()["max_manifest_size"].(int64)
	ref, _ := bigManifest(t, reg, "over/app", int(limit)+1)
	_, err := testenv.Client(t, small.ClientURL()).Image(context.Background(), contract.OCIManifest, ref)
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 413 || !strings.Contains(ce.Message, fmt.Sprint(limit)) {
		t.Fatalf("manifest over the lowered limit: %v, want 413 naming %d", err, limit)
	}
}

func scrape(t *testing.T, w *testworker.Worker) string {
	t.Helper()
	rec := &strings.Builder{}
	req, _ := http.NewRequest(http.MethodGet, "/metrics", nil)
	rw := &recorder{header: http.Header{}, body: rec}
	w.Metrics().Handler().ServeHTTP(rw, req)
	return rec.String()
}

type recorder struct {
	header http.Header
	body   io.Writer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(int)             {}

func grep(s, what string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
