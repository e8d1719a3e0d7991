package resolve

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestBackpressure: past --max-pending, a request that would wait on the
// network is answered 503 at once, while hits are still answered.
func TestBackpressure(t *testing.T) {
	f := startFleet(t, 1, 0, WithMaxPending(3), WithConcurrency(1, 0))
	r := f.res[0]
	good := f.reg.PushImage(t, "ok", "v1", testenv.OCIManifest, "linux/amd64")
	mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("ok", "v1")))
	gate := f.reg.Hold("/held/")
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			_, _ = r.Answer(context.Background(), request(contract.OCIManifest, f.reg.Ref("held", fmt.Sprint(i))))
		})
	}
	testenv.Eventually(t, "3 requests pending", func() bool { return r.Pending() == 3 })
	_, err := r.Answer(context.Background(), request(contract.OCIManifest, f.reg.Ref("held", "x")))
	wantError(t, err, 503, "queue limit")
	// Hits are still answered at once.
	if a := mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("ok", "v1"))); !bytes.Equal(a.Body, good.Manifest) || a.Outcome != contract.Hit {
		t.Fatalf("hit under backpressure: %q", a.Outcome)
	}
	gate.Release()
	wg.Wait()
}
