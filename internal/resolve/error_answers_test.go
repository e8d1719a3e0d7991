package resolve

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestErrorAnswers: bad payloads and each kind of registry failure are
// answered with the contract's code and a one-line message saying why
// (with the registry's Retry-After on a 429); the resolver keeps serving
// after each, leaks no fetch slot or pending count, and caches no error.
// How the NATS front replies each code is internal/queue's
// TestErrorReplies.
func TestErrorAnswers(t *testing.T) {
	f := startFleet(t, 1, 0, WithFetchTimeout(2*time.Second))
	r := f.res[0]
	good := f.reg.PushImage(t, "good", "v1", testenv.OCIManifest, "linux/amd64")

	// A listener that accepts and never answers, and a port with nobody.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	testenv.Must(t, err, "listen")
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	closedPort := testenv.FreePort(t)

	// Registry misbehaviour, served by overrides on named repositories.
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/huge/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", testenv.OCIManifest)
			// No Content-Length: the limit must hold while reading.
			w.(http.Flusher).Flush()
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			for i := 0; i < (5<<20)/len(chunk); i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/schema1/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
			// As distribution does: the digest of the unsigned payload.
			w.Header().Set("Docker-Content-Digest", testenv.Digest([]byte("payload without signatures")))
			_, _ = w.Write([]byte(`{"schemaVersion":1,"name":"schema1","tag":"v1","fsLayers":[]}`))
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/limited/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`))
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/broken/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/garbage/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", testenv.OCIManifest)
			_, _ = w.Write([]byte(`<html>not a manifest</html>`))
		}))
	bigConfig := f.reg.PushImage(t, "bigconfig", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/bigconfig/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", testenv.OCIManifest)
			_, _ = w.Write(bytes.Replace(bigConfig.Manifest, []byte(`"size": `), []byte(`"size": 9999999`), 1))
		}))

	hang := f.reg.Hold("/hang/")
	defer hang.Release()

	quoted := func(s string) []byte { return []byte(`"` + s + `"`) }
	cases := []struct {
		name    string
		fn      contract.Function
		payload []byte
		code    int
		part    string
	}{
		{"not JSON", contract.ManifestDigest, []byte(`busybox`), 400, "not a JSON string"},
		{"not a string", contract.OCIManifest, []byte(`{"image":"busybox"}`), 400, "not a JSON string"},
		{"number", contract.OCIManifestConfig, []byte(`7`), 400, "not a JSON string"},
		{"zero bytes", contract.ManifestDigest, nil, 400, "empty payload"},
		{"empty string", contract.ManifestDigest, []byte(`""`), 400, "empty image reference"},
		{"over 4 KiB", contract.ManifestDigest, []byte(`"` + strings.Repeat("a", 5000) + `"`), 400, "over the 4096-byte limit"},
		{"invalid reference", contract.ManifestDigest, []byte(`"Not/Valid:ref:"`), 400, "invalid image reference"},
		{"sha512 digest", contract.OCIManifest, quoted(f.reg.Host + "/good@sha512:" + strings.Repeat("ab", 64)), 400, "only sha256"},
		{"unknown tag", contract.ManifestDigest, quoted(f.reg.Ref("good", "nope")), 404, f.reg.Ref("good", "nope")},
		{"unknown repository", contract.OCIManifest, quoted(f.reg.Ref("nothing", "v1")), 404, "404"},
		{"nothing listens", contract.ManifestDigest, quoted(fmt.Sprintf("127.0.0.1:%d/x:y", closedPort)), 502, "unreachable"},
		{"never answers", contract.OCIManifest, quoted(silent.Addr().String() + "/x:y"), 504, "did not answer in time"},
		{"registry hangs", contract.OCIManifest, quoted(f.reg.Ref("hang", "v1")), 504, "did not answer in time"},
		{"oversized manifest", contract.OCIManifest, quoted(f.reg.Ref("huge", "v1")), 413, "limit"},
		{"oversized config", contract.OCIManifestConfig, quoted(f.reg.Ref("bigconfig", "v1")), 413, "over the 8388608-byte limit"},
		{"schema 1", contract.OCIManifest, quoted(f.reg.Ref("schema1", "v1")), 415, "schema 1"},
		{"rate limited", contract.OCIManifest, quoted(f.reg.Ref("limited", "v1")), 429, "Retry-After: 30"},
		{"rate limited digest", contract.ManifestDigest, quoted(f.reg.Ref("limited", "v1")), 429, "retry after 30s"},
		{"registry error", contract.OCIManifest, quoted(f.reg.Ref("broken", "v1")), 502, "500"},
		{"not JSON upstream", contract.OCIManifest, quoted(f.reg.Ref("garbage", "v1")), 502, "not valid JSON"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.Answer(context.Background(), Request{Function: tc.fn, Payload: tc.payload})
			ce := wantError(t, err, tc.code, tc.part)
			if tc.code == 429 && ce.RetryAfter != "30" {
				t.Fatalf("Retry-After %q", ce.RetryAfter)
			}
			// The resolver keeps serving: a hit, and a miss that needs a
			// fetch slot (a leaked slot or pending count would show here),
			// and nothing is left pending.
			if a := mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("good", "v1"))); !bytes.Equal(a.Body, good.Manifest) {
				t.Fatalf("resolver stopped serving after %s", tc.name)
			}
			fresh := f.reg.PushImage(t, "good", fmt.Sprintf("after%d", i), testenv.OCIManifest, "linux/amd64")
			if a := mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("good", fmt.Sprintf("after%d", i)))); !bytes.Equal(a.Body, fresh.Manifest) || a.Outcome != contract.Miss {
				t.Fatalf("after %s, a new image: cache %q", tc.name, a.Outcome)
			}
			testenv.Eventually(t, "no request left pending", func() bool { return r.Pending() == 0 })
		})
	}

	// Errors are not cached: a registry that recovers is asked again.
	gets := f.reg.Count("GET", "manifest")
	_, err = r.Answer(context.Background(), request(contract.OCIManifest, f.reg.Ref("broken", "v1")))
	wantError(t, err, 502, "500")
	if f.reg.Count("GET", "manifest") != gets+1 {
		t.Fatal("an error was answered from the cache")
	}
}
