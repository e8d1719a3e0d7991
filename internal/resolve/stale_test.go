package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// outage makes a registry hang up on every request while on: what an
// unreachable registry looks like to a client.
func outage(reg *testenv.Registry) *atomic.Bool {
	var down atomic.Bool
	reg.Override(func(*http.Request) bool { return down.Load() }, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = c.Close()
		}
	}))
	return &down
}

// TestStaleIfError: with the registry down under load, three workers
// sharing Redis answer every key fetched within the stale window with
// its last answer, marked stale with its age, with no failure; a key
// never fetched gets 502; the registry sees one attempt per key, not one
// per request; once the registry is back, answers are fresh again.
func TestStaleIfError(t *testing.T) {
	const ttl = time.Second
	f := startFleet(t, 3, 0, WithTTL(ttl, 0), WithStaleIfError(time.Hour))
	down := outage(f.reg)
	var refs []string
	want := map[string]string{}
	for i := range 5 {
		img := f.reg.PushImage(t, "stale/app", fmt.Sprint("v", i), testenv.OCIManifest, "linux/amd64")
		ref := f.reg.Ref("stale/app", fmt.Sprint("v", i))
		refs = append(refs, ref)
		want[ref] = `{"digest":"` + img.Digest + `"}`
		if _, err := f.res[i%3].Answer(context.Background(), request(contract.ManifestDigest, ref)); err != nil {
			t.Fatal(err)
		}
	}
	f.reg.PushImage(t, "stale/app", "never", testenv.OCIManifest, "linux/amd64")

	down.Store(true)
	time.Sleep(ttl + 100*time.Millisecond)
	f.reg.ResetCounts()
	var failures, stale atomic.Int64
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			ref := refs[i%len(refs)]
			a, err := f.res[i%3].Answer(context.Background(), request(contract.ManifestDigest, ref))
			switch {
			case err != nil:
				failures.Add(1)
				t.Errorf("%s during the outage: %v", ref, err)
			case a.Outcome != contract.Stale || string(a.Body) != want[ref] || a.Age < ttl:
				t.Errorf("%s during the outage: %s %s age %s, want the last answer, stale, at least %s old", ref, a.Outcome, a.Body, a.Age, ttl)
			default:
				stale.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("registry down: 300 requests over 5 keys and 3 workers: %d stale, %d failed; upstream %d manifest HEADs, %d GETs",
		stale.Load(), failures.Load(), f.reg.Count("HEAD", "manifest"), f.reg.Count("GET", "manifest"))
	// Each fetch attempt is a HEAD that fails, then the GET fallback:
	// count attempts by GETs. (Go's HTTP client itself retries a HEAD
	// once when the server hangs up on a reused connection.)
	if n := f.reg.Count("GET", "manifest"); n < 1 || n > len(refs) {
		t.Errorf("the dead registry saw %d fetch attempts (manifest GETs) for %d keys, want at most one per key", n, len(refs))
	}
	_, err := f.res[0].Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("stale/app", "never")))
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 502 {
		t.Errorf("a key never fetched during the outage: %v, want 502", err)
	}

	down.Store(false)
	testenv.Eventually(t, "fresh answers once the registry is back", func() bool {
		a, err := f.res[1].Answer(context.Background(), request(contract.ManifestDigest, refs[0]))
		return err == nil && a.Outcome != contract.Stale
	})
}

// TestNeverStaleForRefusals: a revoked credential, a refused access or a
// deleted tag must show: 401, 403 and 404 are answered as they are, even
// with a stale answer at hand.
func TestNeverStaleForRefusals(t *testing.T) {
	const ttl = 500 * time.Millisecond
	for _, status := range []int{401, 403, 404} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			r := newResolverOn(t)
			res := newResolver(t, WithTTL(ttl, 0), WithStaleIfError(time.Hour))
			r.reg.PushImage(t, "refused/app", "v1", testenv.OCIManifest, "linux/amd64")
			ref := r.reg.Ref("refused/app", "v1")
			if _, err := res.Answer(context.Background(), request(contract.OCIManifest, ref)); err != nil {
				t.Fatal(err)
			}
			r.reg.Override(func(q *http.Request) bool { return strings.Contains(q.URL.Path, "/manifests/") },
				http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
			time.Sleep(ttl + 100*time.Millisecond)
			_, err := res.Answer(context.Background(), request(contract.OCIManifest, ref))
			var ce *contract.Error
			if !errors.As(err, &ce) || ce.Code != status {
				t.Fatalf("registry answering %d: %v, want %d, not a stale answer", status, err, status)
			}
		})
	}
}

// TestRateLimitedServesStale: a 429 with Retry-After is answered stale,
// and the registry is not asked again for that registry's stale keys
// before the Retry-After is over, even past the TTL.
func TestRateLimitedServesStale(t *testing.T) {
	const ttl = 300 * time.Millisecond
	r := newResolverOn(t)
	res := newResolver(t, WithTTL(ttl, 0), WithStaleIfError(time.Hour))
	var refs []string
	for i := range 2 {
		r.reg.PushImage(t, "limited/app", fmt.Sprint("v", i), testenv.OCIManifest, "linux/amd64")
		refs = append(refs, r.reg.Ref("limited/app", fmt.Sprint("v", i)))
		if _, err := res.Answer(context.Background(), request(contract.ManifestDigest, refs[i])); err != nil {
			t.Fatal(err)
		}
	}
	r.reg.Override(func(q *http.Request) bool { return strings.Contains(q.URL.Path, "/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(http.StatusTooManyRequests)
		}))
	time.Sleep(ttl + 50*time.Millisecond)
	r.reg.ResetCounts()
	deadline := time.Now().Add(2 * time.Second) // past several TTLs, within the Retry-After
	for time.Now().Before(deadline) {
		for _, ref := range refs {
			a, err := res.Answer(context.Background(), request(contract.ManifestDigest, ref))
			if err != nil || a.Outcome != contract.Stale {
				t.Fatalf("%s rate-limited: %v %v, want stale", ref, a.Outcome, err)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := r.reg.Count("HEAD", "manifest"); n != 1 {
		t.Errorf("the rate-limited registry saw %d manifest HEADs within its Retry-After, want 1", n)
	}
}

// TestNegativeCaching: with --negative-ttl, a rollout asking 300 times,
// over three workers, for a tag that does not exist costs one registry
// fetch per negative TTL, and every answer is the registry's 404. Once
// the TTL is over, the tag pushed meanwhile is found.
func TestNegativeCaching(t *testing.T) {
	const negTTL = time.Second
	var negHits atomic.Int64
	f := startFleet(t, 3, 0, WithNegativeTTL(negTTL), WithNegativeHook(func() { negHits.Add(1) }))
	f.reg.PushImage(t, "typo/app", "v1", testenv.OCIManifest, "linux/amd64") // the repository exists
	ref := f.reg.Ref("typo/app", "v1-typo")
	f.reg.ResetCounts()
	var notFound atomic.Int64
	// One after the other, as admission requests of a rollout come: no
	// singleflight or fleet lock shares them, only the negative cache.
	for i := range 300 {
		_, err := f.res[i%3].Answer(context.Background(), request(contract.ManifestDigest, ref))
		var ce *contract.Error
		if errors.As(err, &ce) && ce.Code == 404 && strings.Contains(ce.Message, "v1-typo") {
			notFound.Add(1)
		} else {
			t.Fatalf("mistyped tag: %v, want the registry's 404", err)
		}
	}
	heads := f.reg.CountManifest("HEAD", "typo/app", "v1-typo")
	t.Logf("300 requests for a mistyped tag over 3 workers: %d answered 404, %d from the negative cache, %d registry HEADs", notFound.Load(), negHits.Load(), heads)
	if heads != 1 {
		t.Errorf("the registry saw %d HEADs for the mistyped tag, want 1", heads)
	}
	if negHits.Load() == 0 {
		t.Error("no negative hit counted")
	}
	img := f.reg.PushImage(t, "typo/app", "v1-typo", testenv.OCIManifest, "linux/amd64")
	time.Sleep(negTTL + 100*time.Millisecond)
	a, err := f.res[0].Answer(context.Background(), request(contract.ManifestDigest, ref))
	if err != nil || string(a.Body) != `{"digest":"`+img.Digest+`"}` {
		t.Fatalf("after the negative TTL: %s %v, want the pushed tag", a.Body, err)
	}
}
