package resolve

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestConcurrentIdenticalRequestsShareOneFetch: 100 requests for one key
// arriving while its fetch is under way cost the registry one HEAD; one
// is the miss, the others share it. Without Redis the resolver's own
// one resolution per key does it alone; with Redis the fleet lock is
// there as well.
func TestConcurrentIdenticalRequestsShareOneFetch(t *testing.T) {
	for _, redis := range []bool{false, true} {
		t.Run(fmt.Sprintf("redis %v", redis), func(t *testing.T) {
			f, r := fleetOfOne(t, redis)
			img := f.reg.PushImage(t, "burst", "v1", testenv.OCIManifest, "linux/amd64")
			f.reg.ResetCounts()
			gate := f.reg.Hold("/burst/manifests/")

			const n = 100
			type res struct {
				a   Answer
				err error
			}
			out := make(chan res, n)
			for range n {
				go func() {
					a, err := r.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("burst", "v1")))
					out <- res{a, err}
				}()
			}
			<-gate.Arrived()
			testenv.Eventually(t, "100 requests pending", func() bool { return r.Pending() == n })
			gate.Release()

			outcomes := map[contract.Outcome]int{}
			for range n {
				got := <-out
				if got.err != nil {
					t.Fatalf("request failed: %v", got.err)
				}
				if !bytes.Equal(got.a.Body, digestJSON(img.Digest)) {
					t.Fatalf("body %s", got.a.Body)
				}
				outcomes[got.a.Outcome]++
			}
			if h, g := f.reg.Count("HEAD", "manifest"), f.reg.Count("GET", "manifest"); h != 1 || g != 0 {
				t.Fatalf("%d requests made %d HEAD and %d GET upstream, want 1 and 0", n, h, g)
			}
			// Pending() counts a request before it joins the resolution, so
			// one that joins after the fetch finished finds the answer
			// cached: a hit.
			if outcomes[contract.Miss] != 1 || outcomes[contract.Shared]+outcomes[contract.Hit] != n-1 || outcomes[contract.Shared] == 0 {
				t.Fatalf("outcomes %v, want 1 miss and %d shared or hit", outcomes, n-1)
			}
		})
	}
}
