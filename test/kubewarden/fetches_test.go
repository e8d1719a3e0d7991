package kubewarden

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestOneFetchPerImagePerTTL evaluates the policy many times at once from
// several hosts (each with its own NATS connection, as separate policy
// servers would be) against two workers sharing Redis, all on a cold
// cache: the registry serves each manifest and config once, whichever
// host asked first, and nothing more while the answers are fresh. Once
// the TTL has passed, one more evaluation fetches each once again.
func TestOneFetchPerImagePerTTL(t *testing.T) {
	testenv.Long(t, "builds a WASI policy and waits out a TTL")
	const ttl = 30 * time.Second
	f := startFleet(t, worker.Config{CacheTTL: ttl, NegativeTTL: ttl})
	im := f.pushImages(t)
	req := validationRequest(pod(nil, im.NonRoot.Ref, im.Root.Ref, im.Index.Ref, im.Missing), nil)
	tagged := map[string]string{"apps/nonroot": "v1", "apps/root": "v1", "apps/multi": "v1", "apps/missing": "v1"}

	const hosts, each = 3, 2
	var policies []evaluator
	for range hosts {
		policies = append(policies, compile(t, f.host(t)))
	}
	want := ""
	evaluate := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, len(policies)*n)
		for _, p := range policies {
			for range n {
				wg.Go(func() {
					out, err := p.Validate(context.Background(), req)
					var r response
					switch {
					case err != nil:
						errs <- err
					case json.Unmarshal(out, &r) != nil || r.Accepted || r.Message == nil:
						errs <- fmt.Errorf("response %s, want a rejection", out)
					case want != "" && *r.Message != want:
						errs <- fmt.Errorf("decided %q, then %q", want, *r.Message)
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}

	f.Reg.ResetCounts()
	start := time.Now()
	evaluate(each)        // cold, all at once
	fetched := time.Now() // every fetch of the cold round was done by now
	first := f.Reg.Counts()
	perTag := func() map[string]int {
		c := map[string]int{}
		for repo, tag := range tagged {
			for _, m := range []string{"HEAD", "GET"} {
				c[m+" "+repo+":"+tag] = f.Reg.CountManifest(m, repo, tag)
			}
		}
		c["GET index child"] = f.Reg.CountManifest("GET", "apps/multi", im.Index.Resolved)
		return c
	}
	firstTags := perTag()
	t.Logf("first %d evaluations from %d hosts, cold: registry requests %v; per manifest %v", hosts*each, hosts, first, firstTags)
	// One request per capability and image, whichever host asked first:
	// a HEAD for manifest_digest, a GET of the tag for oci_manifest and
	// another for oci_manifest_config (cached apart, since the answers
	// differ), the index's child for the fleet's platform and each
	// config blob. The missing image: its HEAD and GET 404s, cached for
	// NegativeTTL; the policy stops at manifest_digest.
	wantTags := map[string]int{"GET index child": 1}
	for repo, tag := range tagged {
		wantTags["HEAD "+repo+":"+tag] = 1
		wantTags["GET "+repo+":"+tag] = 2
	}
	wantTags["GET apps/missing:v1"] = 1
	if !equal(firstTags, wantTags) {
		t.Errorf("registry requests per manifest %v, want %v", firstTags, wantTags)
	}
	// One config blob per image the policy read a config of (the index's
	// for the fleet's platform only).
	if n := first["GET blob"]; n != 3 {
		t.Errorf("%d config blobs fetched, want 3 (nonroot, root, the index's arm64 image)", n)
	}

	evaluate(each) // warm: no registry request
	if got := f.Reg.Counts(); !equal(got, first) {
		t.Errorf("warm evaluations reached the registry: %v, after the first round %v", got, first)
	}
	if since := time.Since(start); since > ttl*8/10 {
		// Only a machine too busy to evaluate a dozen times in 24 s.
		t.Fatalf("the evaluations took %v, too close to the TTL %v to tell a fetch per TTL", since, ttl)
	}

	// Past the TTL: each is fetched once more, however many ask.
	time.Sleep(time.Until(fetched.Add(ttl + time.Second)))
	evaluate(each)
	again := perTag()
	t.Logf("after the TTL: registry requests %v; per manifest %v", f.Reg.Counts(), again)
	for k, n := range again {
		if n != 2*firstTags[k] {
			t.Errorf("%s: %d requests after the TTL, want %d", k, n, 2*firstTags[k])
		}
	}
	if n := f.Reg.Counts()["GET blob"]; n != 2*first["GET blob"] {
		t.Errorf("%d config blobs fetched after the TTL, want %d", n, 2*first["GET blob"])
	}
}

// evaluator is what the test needs of a compiled policy.
type evaluator interface {
	Validate(ctx context.Context, input []byte) (json.RawMessage, error)
}

func equal(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
