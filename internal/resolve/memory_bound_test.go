package resolve

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
)

// heapAfterGC is the heap in use once garbage is collected.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestMemoryBoundedUnderHostileInput: what a caller sends never grows a
// worker's memory past the bounds of its caches, whatever the volume:
// 200 requests with a 1 MB Regcap-Platform each (200 MB sent) are
// refused and kept nowhere, and 20,000 distinct valid requests of about
// 4 KiB each (80 MB) fill the decoded-request cache only up to its bound.
func TestMemoryBoundedUnderHostileInput(t *testing.T) {
	r := newResolver(t)
	const slack = 24 << 20
	before := heapAfterGC()
	huge := strings.Repeat("l", 1<<20)
	for i := range 200 {
		_, _, err := r.Lookup(Request{Function: contract.OCIManifestConfig, Payload: []byte(`"busybox"`), Platform: huge + fmt.Sprint(i)})
		if ce := contract.AsError(err); ce.Code != 400 {
			t.Fatalf("1 MB platform: %v, want 400", err)
		}
	}
	if grown := int64(heapAfterGC()) - int64(before); grown > slack {
		t.Fatalf("heap grew by %d MiB after 200 MB of platform headers", grown>>20)
	}
	// Tags are at most 128 characters and repositories 255: a long
	// repository path in a JSON string padded with spaces makes ~4 KiB.
	repo := strings.Repeat("a", 200)
	pad := strings.Repeat(" ", 3600)
	for i := range 20000 {
		payload := fmt.Sprintf(`%s"127.0.0.1:5000/%s:t%d"`, pad, repo, i)
		if _, miss, err := r.Lookup(Request{Function: contract.ManifestDigest, Payload: []byte(payload)}); err != nil || miss == nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if grown := int64(heapAfterGC()) - int64(before); grown > slack {
		t.Fatalf("heap grew by %d MiB after 20,000 distinct 4 KiB requests", grown>>20)
	}
}

// TestPlatformIgnoredOutsideConfig: Regcap-Platform is read by
// oci_manifest_config only; on the other functions even one over its
// bound is ignored, as the contract says, not a crash or a 400.
func TestPlatformIgnoredOutsideConfig(t *testing.T) {
	r := newResolverOn(t)
	r.reg.PushImage(t, "plat/app", "v1", "application/vnd.oci.image.manifest.v1+json", "linux/amd64")
	long := strings.Repeat("x", contract.MaxPlatform+36)
	for _, fn := range []contract.Function{contract.ManifestDigest, contract.OCIManifest} {
		req := request(fn, r.reg.Ref("plat/app", "v1"))
		req.Platform = long
		if _, err := r.res.Answer(t.Context(), req); err != nil {
			t.Fatalf("%s with a %d-byte platform: %v", fn, len(long), err)
		}
	}
	req := request(contract.OCIManifestConfig, r.reg.Ref("plat/app", "v1"))
	req.Platform = long
	if _, err := r.res.Answer(t.Context(), req); contract.AsError(err).Code != 400 {
		t.Fatalf("oci_manifest_config with a %d-byte platform: %v, want 400", len(long), err)
	}
}
