package resolve

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

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
