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

// sickLoad asks, in the background, for a rollout of one image (rollout
// callers) and for distinct images (each a new resolution) on every one
// of sick, registries that accept connections and never answer. It
// returns once every request is pending or answered, and a wait for
// their answers.
func sickLoad(t *testing.T, r *Resolver, sick []*testenv.HangingListener, rollout, distinct int) (wait func() []error) {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	ask := func(ref string) {
		wg.Go(func() {
			_, err := r.Answer(context.Background(), request(contract.ManifestDigest, ref))
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	for _, s := range sick {
		for range rollout {
			ask(s.Addr() + "/rollout/app:v1")
		}
		for i := range distinct {
			ask(fmt.Sprintf("%s/many/app%d:v1", s.Addr(), i))
		}
	}
	n := len(sick) * (rollout + distinct)
	testenv.Eventually(t, "the sick load pending or answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return r.Pending()+len(errs) == n
	})
	return func() []error { wg.Wait(); return errs }
}

// TestHangingRegistriesLeaveHealthyMisses: a rollout of one image and a
// hundred distinct images on each of four registries that hang fill the
// queue many times over, yet every miss for a healthy registry is fetched
// and answered while they hang, never 503, and a Redis hit is answered
// too. A rollout's callers share one resolution; each hanging registry
// holds at most its slow-start share of connections.
func TestHangingRegistriesLeaveHealthyMisses(t *testing.T) {
	const maxPending = 64
	f := startFleet(t, 2, 0, WithMaxPending(maxPending), WithConcurrency(16, 8), WithFetchTimeout(time.Minute), WithMemory(0))
	r, other := f.res[0], f.res[1]
	var sick []*testenv.HangingListener
	for range 4 {
		sick = append(sick, testenv.ListenHanging(t))
	}
	const healthy = 20
	for i := range healthy {
		f.reg.PushImage(t, "ok/app", fmt.Sprint("v", i), testenv.OCIManifest, "linux/amd64")
	}
	shared := f.reg.PushImage(t, "ok/shared", "v1", testenv.OCIManifest, "linux/amd64")
	// Stored in Redis by another worker: a Redis hit for r.
	if _, err := other.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("ok/shared", "v1"))); err != nil {
		t.Fatal(err)
	}
	settled(t, other) // its store in Redis, after the reply

	wait := sickLoad(t, r, sick, 100, 100)
	if n := r.Resolutions(); n > maxPending {
		t.Fatalf("%d resolutions, over --max-pending %d", n, maxPending)
	}
	for i := range healthy {
		a, err := r.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("ok/app", fmt.Sprint("v", i))))
		if err != nil || a.Outcome != contract.Miss {
			t.Fatalf("healthy miss %d beside four hanging registries: %v %v", i, a.Outcome, err)
		}
	}
	a, err := r.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("ok/shared", "v1")))
	if err != nil || a.Outcome != contract.Hit || string(a.Body) != `{"digest":"`+shared.Digest+`"}` {
		t.Fatalf("redis hit beside four hanging registries: %s %v %v", a.Body, a.Outcome, err)
	}
	for i, s := range sick {
		if n := s.Accepted(); n > slowStart {
			t.Errorf("hanging registry %d: %d connections, want at most %d (its slow-start share)", i, n, slowStart)
		}
	}
	if n := r.Resolutions(); n > maxPending {
		t.Fatalf("%d resolutions, over --max-pending %d", n, maxPending)
	}
	r.Close()
	pushed := 0
	for _, err := range wait() {
		var ce *contract.Error
		switch {
		case !errors.As(err, &ce) || ce.Code != 503:
			t.Errorf("sick request: %v, want 503", err)
		case strings.Contains(ce.Message, "more than its share"):
			pushed++
		}
	}
	if pushed == 0 {
		t.Error("no sick resolution was pushed out for the healthy registry's share")
	}
}

// TestRolloutTakesOnePlace: a thousand callers of one image on a
// hanging registry wait on one resolution: a miss for another image still
// finds a place with --max-pending 2.
func TestRolloutTakesOnePlace(t *testing.T) {
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "ok/app", "v1", testenv.OCIManifest, "linux/amd64")
	sick := testenv.ListenHanging(t)
	r := newResolver(t, WithMaxPending(2), WithFetchTimeout(time.Minute))
	wait := sickLoad(t, r, []*testenv.HangingListener{sick}, 1000, 0)
	if n := r.Resolutions(); n != 1 {
		t.Fatalf("a rollout of one image holds %d resolutions, want 1", n)
	}
	a, err := r.Answer(context.Background(), request(contract.ManifestDigest, reg.Ref("ok/app", "v1")))
	if err != nil || string(a.Body) != `{"digest":"`+img.Digest+`"}` {
		t.Fatalf("miss beside the rollout: %s %v", a.Body, err)
	}
	r.Close()
	for _, err := range wait() {
		if ce := contract.AsError(err); ce.Code != 503 {
			t.Fatalf("rollout caller after Close: %v, want 503", err)
		}
	}
}
