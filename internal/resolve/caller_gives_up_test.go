package resolve

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestCallerGivingUpDoesNotFailOthers: the shared fetch runs on its own
// context, so the first caller giving up (a 504 for it alone) does not
// cancel it for the caller still waiting, with or without Redis.
func TestCallerGivingUpDoesNotFailOthers(t *testing.T) {
	for _, redis := range []bool{false, true} {
		t.Run(fmt.Sprintf("redis %v", redis), func(t *testing.T) {
			f, r := fleetOfOne(t, redis)
			img := f.reg.PushImage(t, "patient", "v1", testenv.OCIManifest, "linux/amd64")
			gate := f.reg.Hold("/patient/manifests/")
			req := request(contract.ManifestDigest, f.reg.Ref("patient", "v1"))

			ctx, cancel := context.WithCancel(context.Background())
			impatient := make(chan error, 1)
			go func() {
				_, err := r.Answer(ctx, req)
				impatient <- err
			}()
			<-gate.Arrived()
			patient := make(chan Answer, 1)
			go func() {
				a, err := r.Answer(context.Background(), req)
				if err != nil {
					t.Errorf("patient caller: %v", err)
				}
				patient <- a
			}()
			testenv.Eventually(t, "both requests pending", func() bool { return r.Pending() == 2 })
			cancel()
			err := <-impatient
			if err == nil {
				t.Fatal("the cancelled caller got an answer")
			}
			wantError(t, err, 504, "the fetch goes on")
			gate.Release()
			if a := <-patient; !bytes.Equal(a.Body, digestJSON(img.Digest)) {
				t.Fatalf("patient caller: %s", a.Body)
			}
		})
	}
}
