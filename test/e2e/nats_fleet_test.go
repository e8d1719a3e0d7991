package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
)

// natsFleet is one NATS server, one registry and one worker on loopback,
// and a client on its own connection.
type natsFleet struct {
	reg     *testenv.Registry
	natsURL string
	worker  *testworker.Worker
	cli     *client.Client
}

func startNATSFleet(t *testing.T, cfg testworker.Config) *natsFleet {
	t.Helper()
	ns := testenv.StartNATS(t)
	cfg.NATSURL = ns.ClientURL()
	f := &natsFleet{reg: testenv.StartRegistry(t), natsURL: ns.ClientURL()}
	f.worker = testworker.Start(t, cfg)
	f.cli = testenv.Client(t, ns.ClientURL())
	return f
}

// natsCall asks fn for image and fails the test on an error.
func natsCall(t *testing.T, c *client.Client, fn contract.Function, image string, opts ...client.CallOption) *client.Reply {
	t.Helper()
	r, err := c.Image(context.Background(), fn, image, opts...)
	if err != nil {
		t.Fatalf("%s %s: %v", fn, image, err)
	}
	return r
}

func digestReply(d string) []byte { return []byte(`{"digest":"` + d + `"}`) }

func mustPlatform(t *testing.T, s string) v1.Platform {
	t.Helper()
	p, err := handlers.ParsePlatform(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// scrapeMetrics returns the worker's /metrics page.
func scrapeMetrics(t *testing.T, w *testworker.Worker) string {
	t.Helper()
	rec := httptest.NewRecorder()
	w.Metrics().Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// grepLines returns the lines of s that contain what.
func grepLines(s, what string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
