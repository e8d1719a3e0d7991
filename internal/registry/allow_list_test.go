package registry_test

import (
	"testing"

	"github.com/regcap/regcap/internal/testenv"
)

// A registry outside the allow-list is refused before any connection; one
// a pattern allows is fetched from as usual.
func TestGuardAllowList(t *testing.T) {
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "ok/app", "v1", testenv.OCIManifest, "linux/amd64")
	reg.ResetCounts()
	p := newPuller(t, pullerSetup{allow: []string{"ghcr.io", "*.example.com"}})
	wantError(t, p, reg.Ref("ok/app", "v1"), 403, "not in the allowed registries", reg.Host)
	if c := reg.Counts(); len(c) != 0 {
		t.Fatalf("refused registry got requests: %v", c)
	}

	allowed := newPuller(t, pullerSetup{allow: []string{"127.0.0.1:*"}})
	checkAll(t, allowed, reg.Ref("ok/app", "v1"), img.Digest, img.Manifest, testenv.ConfigReply(img))
}
