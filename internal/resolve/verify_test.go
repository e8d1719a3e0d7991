package resolve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestManifestVerified: whatever media type a registry names, a manifest
// whose bytes do not hash to the digest it announces (tags) or to the
// requested digest is a 502, and nothing is cached: asking again asks
// the registry again.
func TestManifestVerified(t *testing.T) {
	r := newResolverOn(t)
	for _, c := range []struct {
		name, contentType string
	}{
		{"OCI manifest", testenv.OCIManifest},
		{"Docker manifest", testenv.DockerManifest},
		{"OCI index", testenv.OCIIndex},
		{"Docker list", testenv.DockerList},
		{"schema 1 content type, schema 2 body", "application/vnd.docker.distribution.manifest.v1+prettyjws"},
		{"application/json", "application/json"},
		{"none", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			repo := "verify/" + strings.NewReplacer(" ", "-", ",", "", "/", "-").Replace(strings.ToLower(c.name))
			img := r.reg.PushImage(t, repo, "v1", testenv.OCIManifest, "linux/amd64")
			lie := []byte(strings.Replace(string(img.Manifest), "amd64", "arm64", 1) + " ")
			r.reg.Override(func(q *http.Request) bool { return strings.Contains(q.URL.Path, "/"+repo+"/manifests/") },
				http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
					if c.contentType != "" {
						w.Header().Set("Content-Type", c.contentType)
					}
					w.Header().Set("Docker-Content-Digest", img.Digest) // the true digest, for other bytes
					if q.Method != http.MethodHead {
						_, _ = w.Write(lie)
					}
				}))
			for _, fn := range []contract.Function{contract.OCIManifest, contract.OCIManifestConfig} {
				for _, ref := range []string{r.reg.Ref(repo, "v1"), r.reg.Ref(repo, img.Digest)} {
					r.reg.ResetCounts()
					for range 2 {
						_, err := r.res.Answer(context.Background(), request(fn, ref))
						var ce *contract.Error
						if !errors.As(err, &ce) || ce.Code != 502 || !strings.Contains(ce.Message, "digest mismatch") {
							t.Fatalf("%s %s: %v, want a 502 digest mismatch", fn, ref, err)
						}
					}
					if n := r.reg.Count("GET", "manifest"); n != 2 {
						t.Errorf("%s %s: %d GETs for two requests: the lie was cached", fn, ref, n)
					}
				}
			}
		})
	}
}

// TestConfigVerified: a config blob must match its descriptor's sha256
// (checked by the registry client) and its size.
func TestConfigVerified(t *testing.T) {
	r := newResolverOn(t)
	img := r.reg.PushImage(t, "verify/config", "v1", testenv.OCIManifest, "linux/amd64")
	var m map[string]any
	testenv.Must(t, json.Unmarshal(img.Manifest, &m), "manifest")
	m["config"].(map[string]any)["size"] = len(img.Config) + 1
	body, _ := json.Marshal(m)
	r.reg.PushManifest(t, "verify/config", "bigger", testenv.OCIManifest, body)

	for range 2 {
		_, err := r.res.Answer(context.Background(), request(contract.OCIManifestConfig, r.reg.Ref("verify/config", "bigger")))
		var ce *contract.Error
		if !errors.As(err, &ce) || ce.Code != 502 || !strings.Contains(ce.Message, "descriptor says") {
			t.Fatalf("config of the wrong size: %v, want 502", err)
		}
	}
	if n := r.reg.Count("GET", "blob"); n != 2 {
		t.Errorf("%d config GETs for two requests: the answer was cached", n)
	}
}

type resolverOn struct {
	reg *testenv.Registry
	res *Resolver
}

// newResolverOn is a resolver with its own registry, without Redis.
func newResolverOn(t *testing.T) resolverOn {
	return resolverOn{reg: testenv.StartRegistry(t), res: newResolver(t)}
}

// TestErrorMessagesBounded: a 404 for a platform an index of 500 entries
// lacks lists a few and counts the rest, and every message stays within
// contract.MaxMessage on one line, so that an error reply always fits.
func TestErrorMessagesBounded(t *testing.T) {
	r := newResolverOn(t)
	var entries []string
	for i := range 500 {
		entries = append(entries, fmt.Sprintf(`{"mediaType":%q,"digest":"sha256:%064x","size":100,"platform":{"os":"linux","architecture":"arch%03d"}}`, testenv.OCIManifest, i, i))
	}
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[%s]}`, testenv.OCIIndex, strings.Join(entries, ","))
	// Served as is: the registry would want every entry pushed first.
	r.reg.Override(func(q *http.Request) bool { return strings.Contains(q.URL.Path, "/bounded/app/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", testenv.OCIIndex)
			w.Header().Set("Docker-Content-Digest", testenv.Digest([]byte(index)))
			_, _ = w.Write([]byte(index))
		}))
	_, err := r.res.Answer(context.Background(), Request{Function: contract.OCIManifestConfig,
		Payload: []byte(`"` + r.reg.Ref("bounded/app", "v1") + `"`), Platform: "linux/s390x"})
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 404 || !strings.Contains(ce.Message, "and 484 more") {
		t.Fatalf("got %v, want a 404 listing 16 platforms and 484 more", err)
	}
	if len(ce.Message) > contract.MaxMessage {
		t.Fatalf("message of %d bytes", len(ce.Message))
	}
	if got := contract.Bound(strings.Repeat("é", contract.MaxMessage) + "\nrest"); len(got) > contract.MaxMessage || !utf8.ValidString(got) || strings.Contains(got, "\n") {
		t.Fatalf("contract.Bound: %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
	}
}

// TestBadReferencesNeverDial: a reference outside the distribution
// grammar is a 400 naming what is wrong, before any network activity:
// the listener it names accepts no connection.
func TestBadReferencesNeverDial(t *testing.T) {
	cl := testenv.ListenCounting(t, "127.0.0.1:0")
	host := cl.Addr()
	r := newResolver(t)
	for _, c := range []struct{ ref, part string }{
		{host + "/a/../b:v1", `repository path component ".."`},
		{host + "/./b:v1", `repository path component "."`},
		{host + "/a//b:v1", `repository path component ""`},
		{host + "/-a:v1", `repository path component "-a"`},
		{host + "/a:.v1", `tag ".v1"`},
		{"127.0.0.1:65536/a:v1", `registry port "65536"`},
		{"127.0.0.1:0/a:v1", `registry port "0"`},
	} {
		_, err := r.Answer(context.Background(), request(contract.ManifestDigest, c.ref))
		var ce *contract.Error
		if !errors.As(err, &ce) || ce.Code != 400 || !strings.Contains(ce.Message, c.part) {
			t.Errorf("%s: %v, want 400 naming %s", c.ref, err, c.part)
		}
	}
	if n := cl.CountBefore(t); n != 0 {
		t.Errorf("the listener accepted %d connections for invalid references", n)
	}
}

// TestRedirectStaysOnTheAPI: a registry redirecting a manifest request to
// a path of its own outside /v2/ is an upstream fault (502); the path is
// never requested.
func TestRedirectStaysOnTheAPI(t *testing.T) {
	r := newResolverOn(t)
	r.reg.PushImage(t, "redirect/app", "v1", testenv.OCIManifest, "linux/amd64")
	var followed atomic.Int64
	r.reg.Override(func(q *http.Request) bool { return strings.HasPrefix(q.URL.Path, "/admin/") },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { followed.Add(1) }))
	r.reg.Override(func(q *http.Request) bool { return strings.Contains(q.URL.Path, "/redirect/app/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
			http.Redirect(w, q, "/admin/delete-everything", http.StatusTemporaryRedirect)
		}))
	_, err := r.res.Answer(context.Background(), request(contract.OCIManifest, r.reg.Ref("redirect/app", "v1")))
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 502 || !strings.Contains(ce.Message, "outside its /v2/ API") {
		t.Fatalf("got %v, want 502 saying the redirect left /v2/", err)
	}
	if n := followed.Load(); n != 0 {
		t.Fatalf("the redirect was followed %d times", n)
	}
}
