package httpfront_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// TestPlainAPI: GET /v1/<function>?image= and POST with the waPC payload
// answer the resolver's body byte for byte, with Regcap-Cache (and
// Regcap-Age when stale); HEAD is GET without the body.
func TestPlainAPI(t *testing.T) {
	res := newStub().
		answer("app:v1", digestBody, contract.Miss).
		set("app:hot", stubAnswer{Answer: resolve.Answer{Body: []byte(digestBody), Outcome: contract.Hit}, memory: true}).
		set("app:old", stubAnswer{Answer: resolve.Answer{Body: []byte(digestBody), Outcome: contract.Stale, Age: 90*time.Second + 600*time.Millisecond}}).
		answer("app:cfg", `{"manifest":{},"digest":"sha256:00","config":{}}`, contract.Shared)
	_, srv := start(t, res)
	notFound := `"` + strings.Repeat("a", contract.MaxPayload-2) + `"` // exactly the limit: asked
	for _, c := range []struct {
		name, method, path, body string
		header                   http.Header
		code                     int
		want                     string            // body, or for errors a part of the message
		headers                  map[string]string // "" for absent
		platform                 string            // what the resolver was asked
	}{
		{name: "GET, fetched", method: "GET", path: "/v1/manifest_digest?image=app:v1", code: 200, want: digestBody,
			headers: map[string]string{"Content-Type": "application/json", "Regcap-Cache": "miss", "Regcap-Age": "", "Content-Length": strconv.Itoa(len(digestBody))}},
		{name: "GET, memory hit", method: "GET", path: "/v1/manifest_digest?image=app:hot", code: 200, want: digestBody,
			headers: map[string]string{"Regcap-Cache": "hit", "Regcap-Age": ""}},
		{name: "GET, stale", method: "GET", path: "/v1/oci_manifest?image=app:old", code: 200, want: digestBody,
			headers: map[string]string{"Regcap-Cache": "stale", "Regcap-Age": "90"}},
		{name: "POST the waPC payload", method: "POST", path: "/v1/oci_manifest", body: `"app:v1"`, code: 200, want: digestBody,
			headers: map[string]string{"Regcap-Cache": "miss"}},
		{name: "POST with JSON whitespace", method: "POST", path: "/v1/oci_manifest", body: " \"app:v1\"\n", code: 200, want: digestBody},
		{name: "POST of exactly 4 KiB, its message bounded", method: "POST", path: "/v1/oci_manifest", body: notFound, code: 404, want: "aaa…"},
		{name: "POST one byte over 4 KiB", method: "POST", path: "/v1/oci_manifest", body: notFound + " ", code: 400, want: "over the 4096-byte limit"},
		{name: "POST of 1 MiB", method: "POST", path: "/v1/oci_manifest", body: `"` + strings.Repeat("a", 1<<20) + `"`, code: 400, want: "over the 4096-byte limit"},
		{name: "POST of nothing", method: "POST", path: "/v1/oci_manifest", code: 400, want: "invalid reference"},
		{name: "GET without an image", method: "GET", path: "/v1/manifest_digest", code: 400, want: "invalid reference"},
		{name: "unknown image", method: "GET", path: "/v1/manifest_digest?image=app:nope", code: 404, want: "app:nope: manifest unknown",
			headers: map[string]string{"Content-Type": "application/json", "Regcap-Cache": ""}},
		{name: "unknown function", method: "GET", path: "/v1/pull?image=app:v1", code: 404, want: `no function "pull"`},
		{name: "unknown function, POST", method: "POST", path: "/v1/pull", body: `"app:v1"`, code: 404, want: `no function "pull"`},
		{name: "?platform=", method: "GET", path: "/v1/oci_manifest_config?image=app:cfg&platform=linux/arm64", code: 200,
			want: `{"manifest":{},"digest":"sha256:00","config":{}}`, headers: map[string]string{"Regcap-Cache": "shared"}, platform: "linux/arm64"},
		{name: "Regcap-Platform", method: "GET", path: "/v1/oci_manifest_config?image=app:cfg", header: http.Header{"Regcap-Platform": {"linux/arm/v7"}},
			code: 200, want: `{"manifest":{},"digest":"sha256:00","config":{}}`, platform: "linux/arm/v7"},
		{name: "?platform= over Regcap-Platform", method: "POST", path: "/v1/oci_manifest_config?platform=linux/s390x", body: `"app:cfg"`,
			header: http.Header{"Regcap-Platform": {"linux/arm/v7"}}, code: 200, want: `{"manifest":{},"digest":"sha256:00","config":{}}`, platform: "linux/s390x"},
		{name: "HEAD", method: "HEAD", path: "/v1/manifest_digest?image=app:v1", code: 200, want: "",
			headers: map[string]string{"Content-Type": "application/json", "Regcap-Cache": "miss", "Content-Length": strconv.Itoa(len(digestBody))}},
		{name: "HEAD of an unknown image", method: "HEAD", path: "/v1/manifest_digest?image=app:nope", code: 404, want: "",
			headers: map[string]string{"Regcap-Cache": ""}},
		{name: "HEAD without an image", method: "HEAD", path: "/v1/manifest_digest", code: 400, want: ""},
		{name: "DELETE", method: "DELETE", path: "/v1/manifest_digest?image=app:v1", code: 405},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, h, body := do(t, srv.URL+c.path, c.method, c.body, c.header)
			if code != c.code {
				t.Fatalf("%d %s, want %d", code, body, c.code)
			}
			switch {
			case code == 200 || c.method == "HEAD":
				if body != c.want {
					t.Errorf("body %q, want %q", body, c.want)
				}
			case code != 405:
				var e map[string]any
				if json.Unmarshal([]byte(body), &e) != nil || e["code"] != float64(c.code) || !strings.Contains(fmt.Sprint(e["message"]), c.want) {
					t.Errorf("body %s, want {\"code\":%d,\"message\":\"…%s…\"}", body, c.code, c.want)
				}
			}
			for k, v := range c.headers {
				if got := h.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if c.platform != "" {
				if p := res.lastRequest().Platform; p != c.platform {
					t.Errorf("the resolver was asked for platform %q, want %q", p, c.platform)
				}
			}
		})
	}
}
