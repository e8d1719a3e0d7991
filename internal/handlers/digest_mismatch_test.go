package handlers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// For repo@sha256:A, a registry whose HEAD announces
// Docker-Content-Digest: sha256:B makes manifest_digest fail with a 502
// digest mismatch: B is never answered, and the registry that lied is not
// asked again with a GET.
func TestDigestReferenceHeadAnnouncesAnotherDigest(t *testing.T) {
	reg := testenv.StartRegistry(t)
	asked := reg.PushImage(t, "r/app", "v1", testenv.OCIManifest, "linux/amd64")
	announced := reg.PushImage(t, "r/app", "v2", testenv.OCIManifest, "linux/amd64")

	// The real registry behind a proxy that rewrites the digest its HEADs
	// announce, as a registry (or a cache in front of one) gone wrong would.
	target, err := url.Parse(reg.Server.URL)
	testenv.Must(t, err, "registry URL")
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		if r.Request.Method == http.MethodHead && strings.Contains(r.Request.URL.Path, "/manifests/") {
			r.Header.Set("Docker-Content-Digest", announced.Digest)
		}
		return nil
	}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)

	ref, err := name.ParseReference(strings.TrimPrefix(front.URL, "http://") + "/r/app@" + asked.Digest)
	testenv.Must(t, err, "ref")
	reg.ResetCounts()
	body, err := handlers.NewFetcher(registry.New()).Fetch(context.Background(),
		handlers.Request{Function: contract.ManifestDigest, Ref: ref})
	if err == nil {
		t.Fatalf("answered %s for %s", body, ref)
	}
	e, ok := err.(*contract.Error)
	if !ok || e.Code != 502 || !strings.Contains(e.Message, "digest mismatch") || !strings.Contains(e.Message, announced.Digest) {
		t.Fatalf("HEAD announcing %s for %s: %v, want a 502 digest mismatch naming it", announced.Digest, asked.Digest, err)
	}
	if n := reg.Count("HEAD", "manifest"); n != 1 {
		t.Errorf("%d HEADs, want 1", n)
	}
	if n := reg.Count("GET", "manifest"); n != 0 {
		t.Errorf("%d GETs after the mismatched HEAD, want 0", n)
	}
}
