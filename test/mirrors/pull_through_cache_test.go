package mirrors

import (
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// Two workers of one fleet reach the same registry through different
// mirrors (one a distribution pull-through cache of it, one a copy): the
// cache key is the logical reference, so the second worker answers from
// the first one's entry and its mirror is never asked.
func TestTwoWorkersDifferentMirrorsOneCacheKey(t *testing.T) {
	testenv.Long(t, "starts docker-registry, Redis and two workers")
	up := testenv.StartRegistry(t)
	img := up.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	var direct atomic.Int64 // requests from regcap itself, not through the cache
	up.Override(func(r *http.Request) bool {
		if strings.HasPrefix(r.UserAgent(), "regcap") {
			direct.Add(1)
		}
		return false
	}, nil)
	cache := testenv.StartPullThroughCache(t, "http://"+up.Host)
	other := testenv.StartRegistry(t)
	copyImage(t, other, "team/app", "v1", img)
	redis := testenv.StartRedis(t)

	a := startWorker(t, redis.Addr(), worker.Config{HostsDir: hostsDir(t, up.Host, mirrorLine(cache.Host))})
	b := startWorker(t, redis.Addr(), worker.Config{HostsDir: hostsDir(t, up.Host, mirrorLine(other.Host))})
	ref := up.Ref("team/app", "v1")

	r, err := digestOf(t, a, ref)
	if err != nil || string(r.Body) != `{"digest":"`+img.Digest+`"}` {
		t.Fatalf("worker A: %v %s", err, r)
	}
	// The pull-through cache fetched from the upstream on A's behalf.
	if n := up.Count("HEAD", "manifest") + up.Count("GET", "manifest"); n == 0 {
		t.Fatal("the pull-through cache never asked its upstream: worker A did not go through it")
	}
	if n := direct.Load(); n != 0 {
		t.Fatalf("worker A went to the upstream itself %d times", n)
	}
	r, err = digestOf(t, b, ref)
	if err != nil || string(r.Body) != `{"digest":"`+img.Digest+`"}` {
		t.Fatalf("worker B: %v %s", err, r)
	}
	// A hit on A's entry, or shared when B asked while A was still
	// storing it (A replies before it stores): either way A's fetch.
	if r.Cache != contract.Hit && r.Cache != contract.Shared {
		t.Errorf("worker B answered %s, want a hit on (or a share of) worker A's entry", r.Cache)
	}
	if n := other.Count("HEAD", "manifest") + other.Count("GET", "manifest"); n != 0 {
		t.Errorf("worker B's mirror was asked %d times for an entry the fleet had", n)
	}
	var ce *contract.Error
	if _, err := digestOf(t, b, up.Ref("team/missing", "v1")); !errors.As(err, &ce) || ce.Code != 404 {
		t.Errorf("missing image through B: %v, want 404", err)
	}
}
