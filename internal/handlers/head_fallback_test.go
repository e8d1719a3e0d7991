package handlers_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// A HEAD refused with 401 or 403 is not retried as a GET: the GET would
// be refused the same way.
func TestDigestNoFallbackAfterAccessError(t *testing.T) {
	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		reg := testenv.StartRegistry(t)
		reg.PushImage(t, "r/app", "v1", testenv.OCIManifest, "linux/amd64")
		reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") },
			http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
		reg.ResetCounts()
		ref, err := name.ParseReference(reg.Ref("r/app", "v1"))
		testenv.Must(t, err, "ref")
		f := handlers.NewFetcher(registry.New())
		_, err = f.Fetch(context.Background(), handlers.Request{Function: contract.ManifestDigest, Ref: ref})
		if e, ok := err.(*contract.Error); !ok || e.Code != status {
			t.Errorf("HEAD %d: answered %v", status, e)
		}
		if n := reg.Count("HEAD", "manifest"); n != 1 {
			t.Errorf("HEAD %d: %d HEADs, want 1", status, n)
		}
		if n := reg.Count("GET", "manifest"); n != 0 {
			t.Errorf("HEAD %d: %d GETs after it, want 0", status, n)
		}
	}
}
