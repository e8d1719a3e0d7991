package e2e

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/httpfront"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestHTTPGatekeeperReplyMemory: through the whole worker, a Gatekeeper
// batch of 1,024 spellings of one image (tags before one @sha256:) whose
// oci_manifest_config answer is 2 MiB is one fetch, a reply within the
// 8 MiB budget plus its 413 items, and costs the process (worker and
// client both; they share it) tens of MiB, where a reply built whole was
// over 2 GiB.
func TestHTTPGatekeeperReplyMemory(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{})
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PAD=` + strings.Repeat("a", 2<<20) + `"]},"rootfs":{"type":"layers","diff_ids":[]}}`)
	a.reg.PushBlob(t, "big/app", cfg)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` +
		testenv.Digest(cfg) + `","size":` + fmt.Sprint(len(cfg)) + `},"layers":[]}`)
	d := a.reg.PushManifest(t, "big/app", testenv.Digest(manifest), testenv.OCIManifest, manifest)
	keys := make([]string, 1024)
	keyBytes := 0
	for i := range keys {
		keys[i] = fmt.Sprintf("%s/big/app:t%d@%s", a.reg.Host, i, d)
		keyBytes += len(keys[i])
	}
	body := gkKeys(keys...)
	a.reg.ResetCounts()

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, err := a.client.Post(a.url+"/gatekeeper/v1/oci_manifest_config", "application/json", strings.NewReader(body))
	testenv.Must(t, err, "POST")
	head := make([]byte, 64<<10) // enough to see the items start
	n, _ := io.ReadFull(resp.Body, head)
	rest, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)

	size := int64(n) + rest
	perKey := len(`,{"key":"","error":"413: reply over the 8388608-byte limit (--http-max-reply-bytes); ask for this key in a smaller batch"}`)
	if limit := int64(httpfront.DefaultMaxReplyBytes + keyBytes + len(keys)*perKey); size > limit || size < httpfront.DefaultMaxReplyBytes-int64(len(cfg)+len(manifest)) {
		t.Errorf("reply of %d bytes, want the 8 MiB budget filled and at most %d with the 413 items", size, limit)
	}
	if !strings.Contains(string(head[:n]), `{"key":"`+keys[0]+`","value":{"manifest":`) {
		t.Errorf("reply starts %.300s, want the first key's value", head[:n])
	}
	if g := a.reg.CountManifest("GET", "big/app", d); g != 1 {
		t.Errorf("%d manifest GETs for 1,024 spellings of one entry, want 1", g)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("reply %d bytes; the process allocated %d MiB answering it", size, alloc>>20)
	if alloc > 128<<20 {
		t.Errorf("answering allocated %d MiB, want under 128 MiB (half the chart's limit; 1,024 × 2 MiB built whole is 2 GiB): the answer is written, not copied per item", alloc>>20)
	}
}
