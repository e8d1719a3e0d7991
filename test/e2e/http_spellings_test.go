package e2e

import (
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestHTTPGatekeeperSpellingsOneFetch: keys that spell one image
// differently (host/app:v1; host/app:v1@<digest>, host/app:v2@<digest>
// and host/app@<digest>) name two cache entries by the real resolver's
// Key, and the front asks the resolver once per entry (two requests
// pending, not four) and the registry once per entry; every key keeps
// its own item.
func TestHTTPGatekeeperSpellingsOneFetch(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{})
	img := a.reg.PushImage(t, "spell/app", "v1", testenv.OCIManifest, "linux/amd64")
	keys := []string{a.reg.Ref("spell/app", "v1"), a.reg.Host + "/spell/app:v1@" + img.Digest,
		a.reg.Host + "/spell/app:v2@" + img.Digest, a.reg.Ref("spell/app", img.Digest)}
	a.reg.ResetCounts()
	gate := a.reg.Hold("/spell/app/manifests/")
	replies := make(chan []byte, 1)
	go func() {
		// Not gkPost: a goroutine must not call t.Fatal.
		resp, err := a.client.Post(a.url+"/gatekeeper/v1/oci_manifest", "application/json", strings.NewReader(gkKeys(keys...)))
		if err != nil {
			replies <- []byte(err.Error())
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		replies <- b
	}()
	testenv.Eventually(t, "both entries to be asked for", func() bool { return a.w.Pending() >= 2 })
	// A front resolving every spelling would reach four; the wait only
	// gives it the time to show it.
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if n := a.w.Pending(); n > 2 {
			t.Errorf("%d requests pending for four spellings of two entries, want 2", n)
			break
		}
	}
	gate.Release()
	var pr gkResponse
	if b := <-replies; json.Unmarshal(b, &pr) != nil {
		t.Fatalf("reply: %.300s", b)
	}
	if len(pr.Response.Items) != len(keys) {
		t.Fatalf("%d items for %d keys: %+v", len(pr.Response.Items), len(keys), pr.Response)
	}
	for i, it := range pr.Response.Items {
		if it.Key != keys[i] || it.Error != "" || string(httpCompact(t, it.Value)) != string(httpCompact(t, img.Manifest)) {
			t.Errorf("item %d: %+v, want key %s with the manifest", i, it, keys[i])
		}
	}
	if n, d := a.reg.CountManifest("GET", "spell/app", "v1"), a.reg.CountManifest("GET", "spell/app", img.Digest); n != 1 || d != 1 {
		t.Errorf("%d GETs of the tag and %d of the digest for four spellings of two entries, want 1 each", n, d)
	}
}
