package resolve

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestDigestReferences: name@digest and name:tag@digest are answered by
// the digest alone (the tag is ignored, as in Docker), for every function
// and for an index's child; an unknown digest is a 404 found by HEAD, and
// a digest of another repository is not this one's.
func TestDigestReferences(t *testing.T) {
	f := startFleet(t, 1, 0)
	r := f.res[0]
	idx := f.reg.PushMultiPlatform(t, "app", "v1", testenv.OCIIndex)
	f.reg.PushImage(t, "plain", "v1", testenv.OCIManifest, "linux/amd64")

	for _, image := range []string{
		f.reg.Ref("app", idx.Digest),
		f.reg.Host + "/app:v1@" + idx.Digest,
		f.reg.Host + "/app:no-such-tag@" + idx.Digest, // the tag is ignored, as in Docker
	} {
		t.Run(image, func(t *testing.T) {
			if got := mustAnswer(t, r, request(contract.ManifestDigest, image)).Body; !bytes.Equal(got, digestJSON(idx.Digest)) {
				t.Errorf("digest: %s", got)
			}
			if got := mustAnswer(t, r, request(contract.OCIManifest, image)).Body; !bytes.Equal(got, idx.Body) {
				t.Errorf("manifest differs: %s", got)
			}
			if got := mustAnswer(t, r, request(contract.OCIManifestConfig, image)).Body; !bytes.Equal(got, testenv.ConfigReply(idx.Images[0])) {
				t.Errorf("config differs: %s", got)
			}
		})
	}

	// A platform manifest by digest.
	child := f.reg.Ref("app", idx.Images[1].Digest)
	if got := mustAnswer(t, r, request(contract.OCIManifestConfig, child)).Body; !bytes.Equal(got, testenv.ConfigReply(idx.Images[1])) {
		t.Errorf("config of a child by digest differs: %s", got)
	}

	// An unknown digest is a 404, checked by HEAD.
	unknown := f.reg.Ref("plain", testenv.Digest([]byte("nothing")))
	f.reg.ResetCounts()
	_, err := r.Answer(context.Background(), request(contract.ManifestDigest, unknown))
	wantError(t, err, 404, unknown)
	if n := f.reg.Count("HEAD", "manifest"); n != 1 {
		t.Errorf("unknown digest: %d HEADs, want 1", n)
	}

	// A digest that exists under another repository is not this one's.
	_, err = r.Answer(context.Background(), request(contract.OCIManifest, f.reg.Ref("plain", idx.Digest)))
	wantError(t, err, 404, "plain@")
}

// TestDigestMismatchIsRefusedAndNotCached: a registry answering a digest
// reference with other bytes is a 502, asked again on the next request.
func TestDigestMismatchIsRefusedAndNotCached(t *testing.T) {
	f := startFleet(t, 1, 0)
	img := f.reg.PushImage(t, "liar", "v1", testenv.OCIManifest, "linux/amd64")
	other := f.reg.PushImage(t, "liar", "v2", testenv.OCIManifest, "linux/amd64")
	// The registry answers a request for img's digest with other's bytes.
	f.reg.Override(func(r *http.Request) bool {
		return strings.HasSuffix(r.URL.Path, "/manifests/"+img.Digest)
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", testenv.OCIManifest)
		w.Header().Set("Docker-Content-Digest", img.Digest)
		_, _ = w.Write(other.Manifest)
	}))
	ref := f.reg.Ref("liar", img.Digest)
	f.reg.ResetCounts()
	for range 2 {
		_, err := f.res[0].Answer(context.Background(), request(contract.OCIManifest, ref))
		wantError(t, err, 502, "digest mismatch")
	}
	if n := f.reg.Count("GET", "manifest"); n != 2 {
		t.Errorf("the error was cached: %d GETs for 2 requests", n)
	}
}
