package resolve

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestDigestIsOneHeadAndTransportIsReused: a cold manifest_digest costs
// the registry one ping and one HEAD; another tag of the same repository
// one more HEAD, with no second ping: the authenticated transport is kept.
func TestDigestIsOneHeadAndTransportIsReused(t *testing.T) {
	f := startFleet(t, 1, 0)
	r := f.res[0]
	a := f.reg.PushImage(t, "repo", "a", testenv.OCIManifest, "linux/amd64")
	b := f.reg.PushImage(t, "repo", "b", testenv.OCIManifest, "linux/amd64")
	f.reg.ResetCounts()

	if got := mustAnswer(t, r, request(contract.ManifestDigest, f.reg.Ref("repo", "a"))).Body; !bytes.Equal(got, digestJSON(a.Digest)) {
		t.Fatalf("digest a: %s", got)
	}
	want := map[string]int{"GET ping": 1, "HEAD manifest": 1}
	if got := f.reg.Counts(); !sameCounts(got, want) {
		t.Fatalf("cold digest: registry saw %v, want %v", got, want)
	}

	if got := mustAnswer(t, r, request(contract.ManifestDigest, f.reg.Ref("repo", "b"))).Body; !bytes.Equal(got, digestJSON(b.Digest)) {
		t.Fatalf("digest b: %s", got)
	}
	want = map[string]int{"GET ping": 1, "HEAD manifest": 2}
	if got := f.reg.Counts(); !sameCounts(got, want) {
		t.Fatalf("second tag of the same repository: registry saw %v, want %v (one more HEAD, no ping, no GET)", got, want)
	}
}

// TestDigestFallsBackToGetWhenHeadFails: a registry refusing HEAD is
// asked once by GET, and the digest is the body's.
func TestDigestFallsBackToGetWhenHeadFails(t *testing.T) {
	f := startFleet(t, 1, 0)
	img := f.reg.PushImage(t, "nohead", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.Override(func(r *http.Request) bool {
		return r.Method == http.MethodHead && testenv.Kind(r.URL.Path) == "manifest"
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusMethodNotAllowed)
	}))
	f.reg.ResetCounts()
	if got := mustAnswer(t, f.res[0], request(contract.ManifestDigest, f.reg.Ref("nohead", "v1"))).Body; !bytes.Equal(got, digestJSON(img.Digest)) {
		t.Fatalf("digest by GET: %s", got)
	}
	if h, g := f.reg.Count("HEAD", "manifest"), f.reg.Count("GET", "manifest"); h != 1 || g != 1 {
		t.Fatalf("want one HEAD then one GET, got %d HEAD, %d GET", h, g)
	}
}
