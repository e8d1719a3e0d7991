package rediscache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
)

var functions = []client.Function{client.ManifestDigest, client.OCIManifest, client.OCIManifestConfig}

type fleet struct {
	reg     *testenv.Registry
	redis   *testenv.Redis
	natsURL string
	workers []*testenv.Worker
	cli     *client.Client
}

func startFleet(t *testing.T, n int, lockWait time.Duration) *fleet {
	t.Helper()
	ns := testenv.StartNATS(t)
	f := &fleet{reg: testenv.StartRegistry(t), redis: testenv.StartRedis(t), natsURL: ns.ClientURL()}
	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	for range n {
		f.workers = append(f.workers, testenv.StartWorker(t, testenv.WorkerConfig{
			NATSURL: ns.ClientURL(), RedisAddr: f.redis.Addr(), LockWait: lockWait,
			QueueOpts: []queue.Option{queue.WithPlatform(amd64)},
		}))
	}
	f.cli = testenv.Client(t, ns.ClientURL())
	return f
}

func (f *fleet) pending() int {
	n := 0
	for _, w := range f.workers {
		n += w.Pending()
	}
	return n
}

// burst sends every (image, function) pair copies times at once while the
// registry holds manifest requests, releases them once every request is
// waiting in a worker, and returns the replies by pair.
func (f *fleet) burst(t *testing.T, images []string, copies int) map[string][]*client.Reply {
	t.Helper()
	gate := f.reg.Hold("/manifests/")
	type res struct {
		key string
		r   *client.Reply
		err error
	}
	total := len(images) * len(functions) * copies
	out := make(chan res, total)
	var wg sync.WaitGroup
	for range copies {
		for _, img := range images {
			for _, fn := range functions {
				wg.Go(func() {
					r, err := f.cli.Image(context.Background(), fn, img)
					out <- res{img + " " + string(fn), r, err}
				})
			}
		}
	}
	// Every request has reached a worker and none is answered: all are
	// racing for the same keys when the registry lets go.
	testenv.Eventually(t, "all requests pending in the workers", func() bool { return f.pending() == total })
	gate.Release()
	wg.Wait()
	close(out)
	replies := map[string][]*client.Reply{}
	for r := range out {
		if r.err != nil {
			t.Errorf("%s: %v", r.key, r.err)
			continue
		}
		replies[r.key] = append(replies[r.key], r.r)
	}
	return replies
}

// TestFleetOneFetchPerKey: 300 concurrent requests over 6 new tags and the
// 3 functions reach the registry once per tag and function, with one
// worker and with three sharing a Redis.
func TestFleetOneFetchPerKey(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d workers", n), func(t *testing.T) {
			f := startFleet(t, n, 0)
			var images []string
			want := map[string][]byte{}
			for i := range 6 {
				tag := fmt.Sprintf("v%d", i)
				img := f.reg.PushImage(t, "fleet/app", tag, testenv.OCIManifest, "linux/amd64")
				ref := f.reg.Ref("fleet/app", tag)
				images = append(images, ref)
				want[ref+" "+string(client.ManifestDigest)] = []byte(`{"digest":"` + img.Digest + `"}`)
				want[ref+" "+string(client.OCIManifest)] = img.Manifest
				want[ref+" "+string(client.OCIManifestConfig)] = testenv.ConfigReply(img)
			}
			f.reg.ResetCounts()

			replies := f.burst(t, images, 300/18+1) // 306 requests
			outcomes := map[string]int{}
			for key, rs := range replies {
				for _, r := range rs {
					if !bytes.Equal(r.Body, want[key]) {
						t.Errorf("%s: wrong body %.80s", key, r.Body)
					}
					outcomes[r.Cache]++
				}
			}
			for i := range 6 {
				tag := fmt.Sprintf("v%d", i)
				heads := f.reg.CountManifest("HEAD", "fleet/app", tag)
				gets := f.reg.CountManifest("GET", "fleet/app", tag)
				t.Logf("%d workers, tag %s: %d HEAD (manifest_digest), %d GET (oci_manifest + oci_manifest_config)", n, tag, heads, gets)
				// One HEAD for manifest_digest; one GET each for
				// oci_manifest and oci_manifest_config.
				if heads != 1 || gets != 2 {
					t.Errorf("tag %s: registry saw %d HEAD and %d GET of the manifest, want 1 and 2", tag, heads, gets)
				}
			}
			if got := f.reg.Count("GET", "blob"); got != 6 {
				t.Errorf("registry saw %d config blob GETs, want 6", got)
			}
			if outcomes[queue.CacheMiss] != 18 {
				t.Errorf("outcomes %v: want exactly 18 misses, one per key", outcomes)
			}
			if n > 1 && outcomes[queue.CacheShared] == 0 {
				t.Errorf("outcomes %v: want shared answers", outcomes)
			}
			t.Logf("outcomes: %v", outcomes)
		})
	}
}

// TestFleetHolderErrorPassedOn: a 404 found by the lock holder is the
// answer of every waiter, from one registry request, and is not cached.
func TestFleetHolderErrorPassedOn(t *testing.T) {
	f := startFleet(t, 3, 0)
	f.reg.PushImage(t, "fleet/err", "present", testenv.OCIManifest, "linux/amd64") // the repository exists
	ref := f.reg.Ref("fleet/err", "absent")
	f.reg.ResetCounts()
	gate := f.reg.Hold("/manifests/absent")
	const n = 60
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := f.cli.Image(context.Background(), client.ManifestDigest, ref)
			errs <- err
		})
	}
	testenv.Eventually(t, "all requests pending", func() bool { return f.pending() == n })
	// The answer is an error, which is not cached: a worker that asked for
	// the lock only after the holder let it go would fetch again. So the
	// registry answers once the two other workers wait on the holder.
	key := handlers.Request{Function: handlers.ManifestDigest, Ref: mustRef(t, ref)}.Key()
	testenv.Eventually(t, "two workers waiting on the holder", func() bool {
		waiting := 0
		for _, w := range f.workers {
			waiting += w.Cache.Waiting(key)
		}
		return waiting == len(f.workers)-1
	})
	gate.Release()
	wg.Wait()
	close(errs)
	for err := range errs {
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != 404 {
			t.Fatalf("want 404, got %v", err)
		}
	}
	// HEAD fails with 404, then the GET fallback: one of each.
	if h, g := f.reg.CountManifest("HEAD", "fleet/err", "absent"), f.reg.CountManifest("GET", "fleet/err", "absent"); h != 1 || g > 1 {
		t.Errorf("registry saw %d HEAD and %d GET for the absent tag, want 1 and at most 1", h, g)
	}
	// Not cached: asking again asks the registry again.
	_, err := f.cli.Image(context.Background(), client.ManifestDigest, ref)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != 404 {
		t.Fatalf("want 404 again, got %v", err)
	}
	if h := f.reg.CountManifest("HEAD", "fleet/err", "absent"); h != 2 {
		t.Errorf("the error was cached: %d HEADs after a second request, want 2", h)
	}
}

// TestFleetDeadHolder: a lock whose holder never answers (a worker killed
// mid-fetch leaves exactly that) delays the others by --lock-wait, after
// which they fetch themselves, while the dead lock is still in Redis.
func TestFleetDeadHolder(t *testing.T) {
	f := startFleet(t, 3, 500*time.Millisecond)
	img := f.reg.PushImage(t, "fleet/dead", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("fleet/dead", "v1")
	key := handlers.Request{Function: handlers.ManifestDigest, Ref: mustRef(t, ref)}.Key()
	rdb := f.redis.Client(t)
	testenv.Must(t, rdb.Set(context.Background(), "regcap:lock:"+key, "dead-worker", time.Minute).Err(), "planting a dead lock")

	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			r, err := f.cli.Image(context.Background(), client.ManifestDigest, ref)
			if err != nil {
				t.Errorf("request failed: %v", err)
				return
			}
			if want := `{"digest":"` + img.Digest + `"}`; string(r.Body) != want {
				t.Errorf("body %s, want %s", r.Body, want)
			}
		})
	}
	wg.Wait()
	if ttl := rdb.PTTL(context.Background(), "regcap:lock:"+key).Val(); ttl <= 0 {
		t.Fatalf("the planted lock is gone (PTTL %s): the test did not test a dead holder", ttl)
	}
	// Each worker took over on its own, at most once (singleflight).
	if h := f.reg.CountManifest("HEAD", "fleet/dead", "v1"); h < 1 || h > 3 {
		t.Errorf("registry saw %d HEADs, want 1 to 3 (one per worker at most)", h)
	}
}

// TestFleetHolderStops: a holder stopped mid-fetch abandons its lock and
// the waiting worker fetches at once, not after its (here one-minute)
// wait.
func TestFleetHolderStops(t *testing.T) {
	f := startFleet(t, 1, time.Minute)
	img := f.reg.PushImage(t, "fleet/stop", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("fleet/stop", "v1")
	gate := f.reg.Hold("/manifests/v1")

	holder := f.workers[0]
	first := make(chan error, 1)
	go func() {
		_, err := f.cli.Image(context.Background(), client.ManifestDigest, ref)
		first <- err
	}()
	<-gate.Arrived()
	other := testenv.StartWorker(t, testenv.WorkerConfig{NATSURL: f.natsURL, RedisAddr: f.redis.Addr(), LockWait: time.Minute})

	// The holder stops taking requests, so the next one goes to the other
	// worker, which finds the lock taken and waits.
	stop, hardStop := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = holder.Shutdown(stop); close(stopped) }()
	testenv.Eventually(t, "holder unsubscribed", func() bool { return holder.Conn.NumSubscriptions() == 0 })
	second := make(chan *client.Reply, 1)
	go func() {
		r, err := f.cli.Image(context.Background(), client.ManifestDigest, ref)
		if err != nil {
			t.Errorf("second request: %v", err)
		}
		second <- r
	}()
	testenv.Eventually(t, "second request waiting in the other worker", func() bool { return other.Pending() == 1 })

	// Past its shutdown timeout the holder cancels its fetch, answers 503
	// and abandons the lock.
	hardStop()
	<-stopped
	if err := <-first; err != nil {
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != 503 {
			t.Errorf("first request: want 503 from the stopping holder, got %v", err)
		}
	}
	gate.Release()
	r := <-second
	if r == nil {
		return
	}
	if want := `{"digest":"` + img.Digest + `"}`; string(r.Body) != want || r.Cache != queue.CacheMiss {
		t.Errorf("second reply %s (%s), want %s (miss)", r.Body, r.Cache, want)
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := handlers.ParseReference([]byte(`"` + s + `"`))
	testenv.Must(t, err, "parsing %s", s)
	return r
}

// TestFleetRedisDown: without Redis the lock is off and each worker falls
// back to its own singleflight: no request fails, and each key is fetched
// at most once per worker.
func TestFleetRedisDown(t *testing.T) {
	f := startFleet(t, 3, 0)
	var images []string
	for i := range 2 {
		tag := fmt.Sprintf("v%d", i)
		f.reg.PushImage(t, "fleet/down", tag, testenv.OCIManifest, "linux/amd64")
		images = append(images, f.reg.Ref("fleet/down", tag))
	}
	f.reg.ResetCounts()
	f.redis.Stop()
	f.burst(t, images, 20) // fails the test on any error reply
	for i := range 2 {
		tag := fmt.Sprintf("v%d", i)
		if h := f.reg.CountManifest("HEAD", "fleet/down", tag); h < 1 || h > 3 {
			t.Errorf("tag %s: %d HEADs, want 1 to 3 (one per worker at most)", tag, h)
		}
	}
}

// TestExpiredHolderSaysNothing: a holder whose lock expired and was taken
// by another worker neither deletes the new lock nor notifies: the
// waiters get the new holder's answer, not the stale one.
func TestExpiredHolderSaysNothing(t *testing.T) {
	r := testenv.StartRedis(t)
	newCache := func() *rediscache.Cache {
		c := rediscache.New(0, rediscache.WithRedis(r.Client(t)))
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	stale, fresh, waiting := newCache(), newCache(), newCache()
	rdb := r.Client(t)
	ctx := context.Background()
	const key = "regcap:v1:manifest_digest:example.test/app:v1"

	old, w := stale.Lock(ctx, key, 50*time.Millisecond)
	if old == nil || w != nil {
		t.Fatal("the first Lock did not take the lock")
	}
	testenv.Eventually(t, "the first lock expired", func() bool {
		return rdb.Exists(ctx, "regcap:lock:"+key).Val() == 0
	})
	cur, w := fresh.Lock(ctx, key, time.Minute)
	if cur == nil || w != nil {
		t.Fatal("the second Lock did not take the expired lock")
	}
	_, waiter := waiting.Lock(ctx, key, time.Minute)
	if waiter == nil {
		t.Fatal("the third Lock did not wait")
	}

	// Published first, the stale notice would be the waiter's answer:
	// each waiter keeps only the first notice it receives.
	old.Done(ctx, &rediscache.Failure{Code: 404, Message: "stale holder"})
	if rdb.Exists(ctx, "regcap:lock:"+key).Val() != 1 {
		t.Fatal("the expired holder deleted the new holder's lock")
	}
	cur.Done(ctx, &rediscache.Failure{Code: 502, Message: "current holder"})
	ans := waiter.Wait(ctx, 20*time.Second)
	if ans == nil || ans.Failure == nil || ans.Failure.Message != "current holder" {
		t.Fatalf("waiter's answer %+v, want the current holder's failure", ans)
	}
}
