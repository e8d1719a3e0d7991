package resolve

import (
	"context"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// maxHitAllocs is what a memory hit allocates in Lookup today: the
// decoded-request cache's key (function, platform and payload joined,
// rawKey). A change that makes hits allocate more fails
// TestMemoryHitAllocs; one that makes them allocate less lowers this.
// (It was 2 until refreshIfDue stopped moving its arguments to the heap
// on every hit: only a refresh that starts does now.)
const maxHitAllocs = 1

// TestMemoryHitAllocs: a memory hit, for each function, allocates at
// most maxHitAllocs times.
func TestMemoryHitAllocs(t *testing.T) {
	f, r := fleetOfOne(t, false)
	f.reg.PushImage(t, "alloc/app", "v1", testenv.OCIManifest, "linux/amd64")
	for _, fn := range []contract.Function{contract.ManifestDigest, contract.OCIManifest, contract.OCIManifestConfig} {
		req := request(fn, f.reg.Ref("alloc/app", "v1"))
		if _, err := r.Answer(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		if _, miss, err := r.Lookup(req); miss != nil || err != nil {
			t.Fatalf("%s: not a memory hit (%v)", fn, err)
		}
		if n := testing.AllocsPerRun(200, func() { _, _, _ = r.Lookup(req) }); n > maxHitAllocs {
			t.Errorf("%s: a memory hit allocates %v times, want at most %d", fn, n, maxHitAllocs)
		}
	}
}
