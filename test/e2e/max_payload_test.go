package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
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
// The front's own rule, headers included, is internal/queue's
// TestReplyOverMaxPayloadIs413.
func TestReplyOverMaxPayload(t *testing.T) {
	rd := testenv.StartRedis(t)
	big := testenv.StartNATS(t)
	small := testenv.StartNATS(t, testenv.MaxPayload(smallPayload))
	reg := testenv.StartRegistry(t)
	ref, body := bigManifest(t, reg, "huge/app", 200<<10)
	testworker.Start(t, testworker.Config{NATSURL: big.ClientURL(), RedisAddr: rd.Addr()})
	w := testworker.Start(t, testworker.Config{NATSURL: small.ClientURL(), RedisAddr: rd.Addr(), NoMemory: true})

	if r := natsCall(t, testenv.Client(t, big.ClientURL()), contract.OCIManifest, ref); len(r.Body) != len(body) {
		t.Fatalf("on the large server: %d bytes", len(r.Body))
	}
	_, err := testenv.Client(t, small.ClientURL()).Image(context.Background(), contract.OCIManifest, ref)
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 413 || !strings.Contains(ce.Message, fmt.Sprint(smallPayload)) || !strings.Contains(ce.Message, "max_payload") {
		t.Fatalf("on the small server: %v, want 413 naming max_payload %d", err, smallPayload)
	}
	if m := scrapeMetrics(t, w); !strings.Contains(m, `regcap_requests_total{code="413",function="oci_manifest"} 1`) {
		t.Errorf("the 413 is not what the metrics counted:\n%s", grepLines(m, "regcap_requests_total"))
	}
}

// TestSmallMaxPayloadKeepsLimits: a worker on a NATS server whose
// max_payload cannot hold the largest answer within its size limits says
// so once at start, naming it, and keeps its limits, which bound what it
// reads, not what it replies: an index larger than max_payload still
// resolves to a platform whose oci_manifest_config answer fits, and the
// index itself, which does not fit, is a 413 naming its size and the
// max_payload, never dropped.
func TestSmallMaxPayloadKeepsLimits(t *testing.T) {
	small := testenv.StartNATS(t, testenv.MaxPayload(smallPayload))
	reg := testenv.StartRegistry(t)
	core, logs := observer.New(zap.InfoLevel)
	testworker.Start(t, testworker.Config{NATSURL: small.ClientURL(), Logger: zap.New(core),
		Config: worker.Config{Platform: mustPlatform(t, "linux/amd64")}})
	lines := logs.FilterMessageSnippet("max_payload is smaller than the largest answer").All()
	if len(lines) != 1 || lines[0].ContextMap()["max_payload"] != int64(smallPayload) {
		t.Fatalf("the small max_payload not logged once with its size: %v", lines)
	}

	idx := reg.PushMultiPlatform(t, "wide/app", "v1", testenv.OCIIndex)
	body := strings.Replace(string(idx.Body), "{", `{"annotations": {"padding": "`+strings.Repeat("p", 2*smallPayload)+`"},`, 1)
	reg.PushManifest(t, "wide/app", "big", testenv.OCIIndex, []byte(body))
	ref := reg.Ref("wide/app", "big")
	cli := testenv.Client(t, small.ClientURL())
	if r := natsCall(t, cli, contract.OCIManifestConfig, ref); !bytes.Equal(r.Body, testenv.ConfigReply(idx.Images[0])) {
		t.Fatalf("config of an index over max_payload: %.200s", r.Body)
	}
	_, err := cli.Image(context.Background(), contract.OCIManifest, ref)
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 413 || !strings.Contains(ce.Message, fmt.Sprintf("max_payload of %d bytes", smallPayload)) {
		t.Fatalf("an index over max_payload: %v, want 413 naming max_payload %d", err, smallPayload)
	}
	m := regexp.MustCompile(`answer of (\d+) bytes`).FindStringSubmatch(ce.Message)
	if m == nil {
		t.Fatalf("413 %q names no size", ce.Message)
	}
	if size, _ := strconv.Atoi(m[1]); size <= len(body) {
		t.Fatalf("413 %q: want the reply's size, over the %d bytes of the index", ce.Message, len(body))
	}
}
