package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestHTTPPlainAPI: over the assembled worker (HTTPS, the real resolver
// and a registry), GET /v1/<function>?image= and POST with the waPC
// payload answer the NATS reply's bytes with Regcap-Cache; errors are the
// contract code with {"code","message"}. The front's own cases, one by
// one, are internal/httpfront's TestPlainAPI against a stub.
func TestHTTPPlainAPI(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{})
	idx := a.reg.PushMultiPlatform(t, "app", "v1", testenv.OCIIndex)
	ref := a.reg.Ref("app", "v1")

	code, h, body := httpGet(t, a.client, a.url+"/v1/manifest_digest?image="+ref)
	if code != 200 || string(body) != `{"digest":"`+idx.Digest+`"}` || h.Get(contract.HeaderCache) != "miss" || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET digest: %d %s %v", code, body, h)
	}
	resp, err := a.client.Post(a.url+"/v1/oci_manifest", "application/json", strings.NewReader(`"`+ref+`"`))
	testenv.Must(t, err, "POST")
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, idx.Body) {
		t.Fatalf("POST manifest: %d, body differs", resp.StatusCode)
	}
	resp, err = a.client.Post(a.url+"/v1/oci_manifest", "application/json", strings.NewReader(`"`+strings.Repeat("a", 1<<20)+`"`))
	testenv.Must(t, err, "POST 1 MiB")
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "over the 4096-byte limit") {
		t.Fatalf("POST of a 1 MiB payload: %d %s, want 400", resp.StatusCode, body)
	}
	code, _, body = httpGet(t, a.client, a.url+"/v1/oci_manifest_config?image="+ref+"&platform=linux/arm64")
	if code != 200 || !bytes.Equal(body, testenv.ConfigReply(idx.Images[1])) {
		t.Fatalf("GET config arm64: %d", code)
	}
	for _, c := range []struct {
		path string
		code int
	}{
		{"/v1/manifest_digest?image=" + a.reg.Ref("app", "nope"), 404},
		{"/v1/manifest_digest?image=Not%20Valid", 400},
		{"/v1/manifest_digest", 400},
		{"/v1/pull?image=" + ref, 404},
	} {
		code, _, body := httpGet(t, a.client, a.url+c.path)
		var e struct {
			Code    int
			Message string
		}
		if code != c.code || json.Unmarshal(body, &e) != nil || e.Code != c.code || e.Message == "" {
			t.Errorf("%s: %d %s, want %d with {code, message}", c.path, code, body, c.code)
		}
	}
}

// TestHTTPGatekeeperBatch: through the real resolver, a mixed batch of
// good, unknown, malformed and duplicate keys gets one item per distinct
// key, in order, each with its value or its error; pin rewrites tags to
// digests.
func TestHTTPGatekeeperBatch(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{})
	img := a.reg.PushImage(t, "app", "v1", testenv.OCIManifest, "linux/amd64")
	good, unknown := a.reg.Ref("app", "v1"), a.reg.Ref("app", "nope")
	pr := gkPost(t, a, "manifest_digest", gkKeys(good, unknown, "Not Valid", good))
	items := pr.Response.Items
	if pr.Response.SystemError != "" || len(items) != 3 {
		t.Fatalf("want 3 items, no system error: %+v", pr.Response)
	}
	if items[0].Key != good || string(items[0].Value) != `"`+img.Digest+`"` || items[0].Error != "" {
		t.Errorf("good key: %+v", items[0])
	}
	if items[1].Key != unknown || !strings.HasPrefix(items[1].Error, "404: ") {
		t.Errorf("unknown key: %+v", items[1])
	}
	if items[2].Key != "Not Valid" || !strings.HasPrefix(items[2].Error, "400: ") {
		t.Errorf("malformed key: %+v", items[2])
	}

	pinned := a.reg.Ref("app", img.Digest)
	pr = gkPost(t, a, "pin", gkKeys(good, pinned))
	if v := string(pr.Response.Items[0].Value); v != `"`+a.reg.Host+`/app@`+img.Digest+`"` {
		t.Errorf("pin %s: %s", good, v)
	}
	if v := string(pr.Response.Items[1].Value); v != `"`+pinned+`"` {
		t.Errorf("pin of a pinned key: %s, want it unchanged", v)
	}

	pr = gkPost(t, a, "oci_manifest", gkKeys(good))
	if !bytes.Equal(pr.Response.Items[0].Value, img.Manifest) && string(httpCompact(t, pr.Response.Items[0].Value)) != string(httpCompact(t, img.Manifest)) {
		t.Errorf("oci_manifest value: %s", pr.Response.Items[0].Value)
	}

	for _, c := range []struct{ name, body, want string }{
		{"not JSON", "{", "not a JSON ProviderRequest"},
		{"wrong kind", `{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"Other","request":{"keys":[]}}`, "want kind ProviderRequest"},
		{"too many keys", gkKeys(make([]string, 1025)...), "over the 1024-key limit"},
		{"body over 1 MiB", gkKeys(strings.Repeat("a", 1<<20)), "request body over"},
	} {
		pr := gkPost(t, a, "manifest_digest", c.body)
		if !strings.Contains(pr.Response.SystemError, c.want) || len(pr.Response.Items) != 0 {
			t.Errorf("%s: %+v, want systemError %q", c.name, pr.Response, c.want)
		}
	}
}

// TestHTTPGatekeeperTimeout: in a batch mixing cache hits with a registry
// that hangs past --http-timeout, the hits are answered and the hung key
// gets an item error, within the timeout; its fetch goes on and fills
// the cache.
func TestHTTPGatekeeperTimeout(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{HTTPTimeout: 500 * time.Millisecond})
	img := a.reg.PushImage(t, "fast/app", "v1", testenv.OCIManifest, "linux/amd64")
	slow := a.reg.PushImage(t, "slow/app", "v1", testenv.OCIManifest, "linux/amd64")
	gkPost(t, a, "manifest_digest", gkKeys(a.reg.Ref("fast/app", "v1"))) // now a hit
	gate := a.reg.Hold("/slow/app/manifests/")
	start := time.Now()
	pr := gkPost(t, a, "manifest_digest", gkKeys(a.reg.Ref("fast/app", "v1"), a.reg.Ref("slow/app", "v1")))
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("answered after %s, far past the 500ms timeout", elapsed)
	}
	it := pr.Response.Items
	if string(it[0].Value) != `"`+img.Digest+`"` || !strings.HasPrefix(it[1].Error, "504: ") {
		t.Fatalf("items %+v, want the hit and a 504 for the hung key", it)
	}
	gate.Release()
	testenv.Eventually(t, "the hung key's fetch to fill the cache", func() bool {
		code, h, body := httpGet(t, a.client, a.url+"/v1/manifest_digest?image="+a.reg.Ref("slow/app", "v1"))
		return code == 200 && h.Get(contract.HeaderCache) == "hit" && string(body) == `{"digest":"`+slow.Digest+`"}`
	})
}
