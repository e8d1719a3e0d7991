package resolve

import (
	"bytes"
	"context"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestHangingRegistryDoesNotBlockOthers: while image A's fetch hangs, a
// cached image and an uncached image are both answered, whether the
// cached one is a memory hit or a Redis hit (memory tier off). Ordering,
// not timing, is asserted: A is still unanswered when the others are.
// That the NATS front answers a memory hit in its callback and the rest
// on goroutines is internal/queue's TestHitInCallbackMissOnGoroutine.
func TestHangingRegistryDoesNotBlockOthers(t *testing.T) {
	for _, tier := range []struct {
		name string
		opts []Option
	}{{"memory hit", nil}, {"redis hit", []Option{WithMemory(0)}}} {
		t.Run(tier.name, func(t *testing.T) {
			f := startFleet(t, 1, 0, tier.opts...)
			r := f.res[0]
			f.reg.PushImage(t, "slow", "v1", testenv.OCIManifest, "linux/amd64")
			b := f.reg.PushImage(t, "cached", "v1", testenv.OCIManifest, "linux/amd64")
			c := f.reg.PushImage(t, "cold", "v1", testenv.OCIManifest, "linux/amd64")
			mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("cached", "v1")))

			gate := f.reg.Hold("/slow/")
			aDone := make(chan error, 1)
			go func() {
				_, err := r.Answer(context.Background(), request(contract.OCIManifest, f.reg.Ref("slow", "v1")))
				aDone <- err
			}()
			<-gate.Arrived()

			if a := mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("cached", "v1"))); !bytes.Equal(a.Body, b.Manifest) || a.Outcome != contract.Hit {
				t.Fatalf("cached image while A hangs: cache %q", a.Outcome)
			}
			if a := mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("cold", "v1"))); !bytes.Equal(a.Body, c.Manifest) || a.Outcome != contract.Miss {
				t.Fatalf("cold image while A hangs: cache %q, body %s", a.Outcome, a.Body)
			}
			select {
			case err := <-aDone:
				t.Fatalf("A was answered before its registry was released: %v", err)
			default:
			}
			gate.Release()
			if err := <-aDone; err != nil {
				t.Fatalf("A after release: %v", err)
			}
		})
	}
}
