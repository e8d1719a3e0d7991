package resolve

import (
	"bytes"
	"context"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// platformRequest is a request for image with Regcap-Platform platform.
func platformRequest(fn contract.Function, image, platform string) Request {
	req := request(fn, image)
	req.Platform = platform
	return req
}

// TestRequestPlatform: oci_manifest_config resolves an index (OCI or
// Docker list) to the request's platform, or to the resolver's own
// without one; a variant matches only when asked for; the platform is part
// of the key; a platform the index lacks is a 404 listing those it has,
// and a malformed one a 400. The other functions ignore it: they answer
// the index itself.
func TestRequestPlatform(t *testing.T) {
	f := startFleet(t, 1, 0) // the resolver's platform is linux/amd64
	r := f.res[0]
	idx := f.reg.PushMultiPlatform(t, "multi", "v1", testenv.OCIIndex)
	list := f.reg.PushMultiPlatform(t, "list", "v1", testenv.DockerList)
	amd, arm := idx.Images[0], idx.Images[1]
	multi := f.reg.Ref("multi", "v1")

	for _, tc := range []struct {
		platform string
		want     []byte
	}{
		{"", testenv.ConfigReply(amd)},
		{"linux/amd64", testenv.ConfigReply(amd)},
		{"linux/arm64", testenv.ConfigReply(arm)},
		{"linux/arm64/v8", testenv.ConfigReply(arm)},
	} {
		if a := mustAnswer(t, r, platformRequest(contract.OCIManifestConfig, multi, tc.platform)); !bytes.Equal(a.Body, tc.want) {
			t.Errorf("platform %q: got %s", tc.platform, a.Body)
		}
	}
	if a := mustAnswer(t, r, platformRequest(contract.OCIManifestConfig, f.reg.Ref("list", "v1"), "linux/arm64")); !bytes.Equal(a.Body, testenv.ConfigReply(list.Images[1])) {
		t.Errorf("docker list arm64: got %s", a.Body)
	}

	// The platform is part of the key: amd64 was cached, arm64 too, and
	// neither answers for the other.
	if a := mustAnswer(t, r, platformRequest(contract.OCIManifestConfig, multi, "linux/arm64")); a.Outcome != contract.Hit || !bytes.Equal(a.Body, testenv.ConfigReply(arm)) {
		t.Errorf("arm64 second call: cache %s", a.Outcome)
	}

	_, err := r.Answer(context.Background(), platformRequest(contract.OCIManifestConfig, multi, "linux/s390x"))
	wantError(t, err, 404, "index has no manifest for linux/s390x; it has linux/amd64, linux/arm64/v8, unknown/unknown, unknown/unknown")

	_, err = r.Answer(context.Background(), platformRequest(contract.OCIManifestConfig, multi, "linux/arm64/v7"))
	wantError(t, err, 404, "linux/arm64/v7")

	_, err = r.Answer(context.Background(), platformRequest(contract.OCIManifestConfig, multi, "linux"))
	wantError(t, err, 400, multi+": invalid platform")

	// The other functions ignore the platform: the index itself.
	if a := mustAnswer(t, r, platformRequest(contract.ManifestDigest, multi, "linux/arm64")); !bytes.Equal(a.Body, digestJSON(idx.Digest)) {
		t.Errorf("digest with a platform: %s", a.Body)
	}
	if a := mustAnswer(t, r, platformRequest(contract.OCIManifest, multi, "linux/arm64")); !bytes.Equal(a.Body, idx.Body) {
		t.Errorf("manifest with a platform: %s", a.Body)
	}
}
