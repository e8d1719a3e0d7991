package resolve

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestSlotsArePerRegistryHost: with one fetch slot per registry, misses
// for several repositories of one hanging registry reach that host one at
// a time: the share is the host's, not each repository's.
func TestSlotsArePerRegistryHost(t *testing.T) {
	sick, healthy := testenv.StartRegistry(t), testenv.StartRegistry(t)
	repos := []string{"a/app", "b/app", "c/app", "d/app"}
	for _, repo := range repos {
		sick.PushImage(t, repo, "v1", testenv.OCIManifest, "linux/amd64")
	}
	img := healthy.PushImage(t, "ok/app", "v1", testenv.OCIManifest, "linux/amd64")
	sick.ResetCounts()
	gate := sick.Hold("/manifests/")
	r := newResolver(t, WithConcurrency(8, 1))
	var wg sync.WaitGroup
	for _, repo := range repos {
		wg.Go(func() { _, _ = r.Answer(context.Background(), request(contract.ManifestDigest, sick.Ref(repo, "v1"))) })
	}
	<-gate.Arrived()
	testenv.Eventually(t, "every repository's miss pending", func() bool { return r.Resolutions() == len(repos) })
	// A miss for another registry is fetched meanwhile: had the sick
	// registry's repositories each had a slot, they would have reached it
	// by now.
	if a, err := r.Answer(context.Background(), request(contract.ManifestDigest, healthy.Ref("ok/app", "v1"))); err != nil || string(a.Body) != `{"digest":"`+img.Digest+`"}` {
		t.Fatalf("healthy registry: %s %v", a.Body, err)
	}
	if n := sick.Count("HEAD", "manifest"); n != 1 {
		t.Errorf("the registry saw %d manifest requests at once from %d repositories, want 1 (one slot per host)", n, len(repos))
	}
	gate.Release()
	wg.Wait()
}

// TestRateLimitBackoffIsPerRegistryHost: after a 429 with Retry-After,
// stale keys of every repository of that registry are answered stale
// without asking it again before the Retry-After: the back-off is the
// host's, not the repository's.
func TestRateLimitBackoffIsPerRegistryHost(t *testing.T) {
	const ttl = 300 * time.Millisecond
	r := newResolverOn(t)
	res := newResolver(t, WithTTL(ttl, 0), WithStaleIfError(time.Hour))
	var refs []string
	for _, repo := range []string{"a/app", "b/app", "c/app"} {
		r.reg.PushImage(t, repo, "v1", testenv.OCIManifest, "linux/amd64")
		refs = append(refs, r.reg.Ref(repo, "v1"))
		if _, err := res.Answer(context.Background(), request(contract.ManifestDigest, refs[len(refs)-1])); err != nil {
			t.Fatal(err)
		}
	}
	r.reg.Override(func(q *http.Request) bool { return strings.Contains(q.URL.Path, "/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
		}))
	time.Sleep(ttl + 50*time.Millisecond)
	r.reg.ResetCounts()
	for i, ref := range refs {
		a, err := res.Answer(context.Background(), request(contract.ManifestDigest, ref))
		if err != nil || a.Outcome != contract.Stale {
			t.Fatalf("%s rate-limited: %v %v, want stale", ref, a.Outcome, err)
		}
		if n := r.reg.Count("HEAD", "manifest"); n != 1 {
			t.Fatalf("after %d repositories the rate-limited registry saw %d manifest HEADs, want 1: %s", i+1, n, fmt.Sprint(r.reg.Counts()))
		}
	}
}
