package resolve

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestSuccessClearsRegistryBackoff: after a 429 with a long Retry-After,
// the fleet answers the registry's stale keys without asking it; once a
// fetch from that registry succeeds, every worker asks it again, not
// only after the Retry-After.
func TestSuccessClearsRegistryBackoff(t *testing.T) {
	const ttl = 300 * time.Millisecond
	f := startFleet(t, 2, 0, WithTTL(ttl, 0), WithStaleIfError(time.Hour), WithMemory(0))
	var limited atomic.Bool
	f.reg.Override(func(q *http.Request) bool { return limited.Load() && strings.Contains(q.URL.Path, "/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
		}))
	f.reg.PushImage(t, "a/app", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.PushImage(t, "c/app", "v1", testenv.OCIManifest, "linux/amd64")
	a, c := request(contract.ManifestDigest, f.reg.Ref("a/app", "v1")), request(contract.ManifestDigest, f.reg.Ref("c/app", "v1"))
	ask := func(i int, req Request) contract.Outcome {
		t.Helper()
		ans, err := f.res[i].Answer(context.Background(), req)
		testenv.Must(t, err, "answer")
		return ans.Outcome
	}
	ask(0, a)
	limited.Store(true)
	time.Sleep(ttl + 50*time.Millisecond)
	if o := ask(0, a); o != contract.Stale {
		t.Fatalf("rate-limited: %s, want stale", o)
	}
	limited.Store(false)
	if o := ask(0, c); o != contract.Miss {
		t.Fatalf("a fresh key once the registry answers again: %s, want miss", o)
	}
	time.Sleep(ttl + 50*time.Millisecond) // the key's own back-off is one TTL
	if o := ask(1, a); o != contract.Miss {
		t.Fatalf("another worker after the registry answered: %s, want a fetch (miss), not stale until the Retry-After", o)
	}
}
