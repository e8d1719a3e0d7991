package resolve

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestSickRegistryDoesNotStarveOthers: twenty misses for a registry that
// hangs hold one fetch slot (a quarter of 4), not the whole pool: a miss
// for a healthy registry is fetched while they wait, and they get 503 or
// 504, never a slot of someone else's.
func TestSickRegistryDoesNotStarveOthers(t *testing.T) {
	sick, healthy := testenv.StartRegistry(t), testenv.StartRegistry(t)
	const n = 20
	for i := range n {
		sick.PushImage(t, "sick/app", fmt.Sprint("t", i), testenv.OCIManifest, "linux/amd64")
	}
	img := healthy.PushImage(t, "ok/app", "v1", testenv.OCIManifest, "linux/amd64")
	sick.ResetCounts()
	gate := sick.Hold("/manifests/")
	defer gate.Release()
	r := newResolver(t, WithConcurrency(4, 0), WithFetchTimeout(2*time.Second))

	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := r.Answer(context.Background(), request(contract.ManifestDigest, sick.Ref("sick/app", fmt.Sprint("t", i))))
			errs <- err
		})
	}
	<-gate.Arrived()
	testenv.Eventually(t, "all sick requests pending", func() bool { return r.Pending() == n })

	a, err := r.Answer(context.Background(), request(contract.ManifestDigest, healthy.Ref("ok/app", "v1")))
	if err != nil || string(a.Body) != `{"digest":"`+img.Digest+`"}` || a.Outcome != contract.Miss {
		t.Fatalf("healthy registry while the sick one hangs: %s %v", a.Body, err)
	}
	if got := sick.Count("HEAD", "manifest"); got != 1 {
		t.Errorf("the sick registry saw %d requests at once, want 1 (its share)", got)
	}

	wg.Wait()
	close(errs)
	shed := 0
	for err := range errs {
		var ce *contract.Error
		switch {
		case errors.As(err, &ce) && ce.Code == 503 && strings.Contains(ce.Message, "fetch slots for "+sick.Host):
			shed++
		case errors.As(err, &ce) && ce.Code == 504:
		default:
			t.Errorf("sick registry: %v, want 503 naming it or 504", err)
		}
	}
	if shed == 0 {
		t.Error("no request was answered 503 for the registry's share")
	}
	for h, st := range r.Registries() {
		if st.InFlight != 0 || st.Queued != 0 {
			t.Errorf("registry %s: %+v with nothing in flight", h, st)
		}
	}
}
