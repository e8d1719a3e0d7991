package resolve

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

var functions = []contract.Function{contract.ManifestDigest, contract.OCIManifest, contract.OCIManifestConfig}

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// fleet is one registry, one Redis, and resolvers sharing it, each with
// its own Redis client, as the workers of a fleet have: no NATS.
type fleet struct {
	reg   *testenv.Registry
	redis *testenv.Redis
	url   string // the Redis URL, when not redis's (a Cluster)
	res   []*Resolver
}

func startFleet(t *testing.T, n int, lockWait time.Duration, opts ...Option) *fleet {
	t.Helper()
	f := &fleet{reg: testenv.StartRegistry(t), redis: testenv.StartRedis(t)}
	for range n {
		f.add(t, lockWait, opts...)
	}
	return f
}

// fleetOfOne is one resolver on a registry, sharing a Redis of its own
// when redis is set, so that a test shows a behaviour with and without
// the fleet lock.
func fleetOfOne(t *testing.T, redis bool) (*fleet, *Resolver) {
	t.Helper()
	f := &fleet{reg: testenv.StartRegistry(t)}
	if !redis {
		return f, newResolver(t)
	}
	f.redis = testenv.StartRedis(t)
	return f, f.add(t, 0)
}

// add starts one more resolver on the fleet's Redis.
func (f *fleet) add(t testing.TB, lockWait time.Duration, opts ...Option) *Resolver {
	return f.addWith(t, lockWait, nil, opts...)
}

// addWith starts one more resolver on the fleet's Redis, its cache made
// with cacheOpts.
func (f *fleet) addWith(t testing.TB, lockWait time.Duration, cacheOpts []rediscache.Option, opts ...Option) *Resolver {
	t.Helper()
	url := f.url
	if url == "" {
		url = f.redis.URL()
	}
	rdb, err := rediscache.NewClient(url, rediscache.ModeAuto)
	testenv.Must(t, err, "redis client")
	t.Cleanup(func() { _ = rdb.Close() })
	c := rediscache.New(rdb, cacheOpts...)
	t.Cleanup(c.Close) // after the resolver's Close: cleanups run last first
	r := newResolver(t, append([]Option{WithRedis(c, lockWait)}, opts...)...)
	f.res = append(f.res, r)
	return r
}

// newResolver is a resolver over a plain registry client, as the worker
// builds it, closed at cleanup.
func newResolver(t testing.TB, opts ...Option) *Resolver {
	t.Helper()
	r := New(fetcherOf(), append([]Option{WithPlatform(amd64)}, opts...)...)
	t.Cleanup(r.Close)
	return r
}

// fetcherOf is the fetch the worker builds, over a plain registry client.
func fetcherOf() *handlers.Fetcher {
	return handlers.NewFetcher(registry.New(registry.WithUserAgent("regcap/test")))
}

// capabilityKey is the cache key of a manifest_digest request for image.
func capabilityKey(image string) (string, error) {
	r, err := handlers.ParseRequest(contract.ManifestDigest, []byte(`"`+image+`"`), "", amd64)
	return r.Key(), err
}

func request(fn contract.Function, image string) Request {
	b, _ := json.Marshal(image)
	return Request{Function: fn, Payload: b}
}

func key(t *testing.T, fn contract.Function, image string) string {
	t.Helper()
	r, err := handlers.ParseRequest(fn, []byte(`"`+image+`"`), "", amd64)
	testenv.Must(t, err, "parsing %s", image)
	return r.Key()
}

func (f *fleet) pending() int {
	n := 0
	for _, r := range f.res {
		n += r.Pending()
	}
	return n
}

// lockWaits is how many of the fleet's resolutions wait on another
// resolver's fetch, their get-or-lock done.
func (f *fleet) lockWaits() int {
	n := 0
	for _, r := range f.res {
		n += r.LockWaits()
	}
	return n
}

type reply struct {
	key string
	a   Answer
	err error
}

// burst sends every (image, function) pair copies times at once, spread
// over the resolvers, while the registry holds manifest requests;
// releases them once every request waits; returns the answers by pair.
func (f *fleet) burst(t *testing.T, images []string, copies int) map[string][]Answer {
	t.Helper()
	gate := f.reg.Hold("/manifests/")
	total := len(images) * len(functions) * copies
	out := make(chan reply, total)
	var wg sync.WaitGroup
	i := 0
	for range copies {
		for _, img := range images {
			for _, fn := range functions {
				r := f.res[i%len(f.res)]
				i++
				wg.Go(func() {
					a, err := r.Answer(context.Background(), request(fn, img))
					out <- reply{img + " " + string(fn), a, err}
				})
			}
		}
	}
	// Every request waits in a resolver and none is answered: all race
	// for the same keys when the registry lets go.
	testenv.Eventually(t, "all requests pending", func() bool { return f.pending() == total })
	gate.Release()
	wg.Wait()
	close(out)
	answers := map[string][]Answer{}
	for r := range out {
		if r.err != nil {
			t.Errorf("%s: %v", r.key, r.err)
			continue
		}
		answers[r.key] = append(answers[r.key], r.a)
	}
	return answers
}

// TestFleetOneFetchPerKey: 300 concurrent requests over 6 new tags and the
// 3 functions reach the registry once per tag and function, with one
// resolver and with three sharing a Redis.
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
				want[ref+" "+string(contract.ManifestDigest)] = []byte(`{"digest":"` + img.Digest + `"}`)
				want[ref+" "+string(contract.OCIManifest)] = img.Manifest
				want[ref+" "+string(contract.OCIManifestConfig)] = testenv.ConfigReply(img)
			}
			f.reg.ResetCounts()

			answers := f.burst(t, images, 300/18+1) // 306 requests
			outcomes := map[contract.Outcome]int{}
			for key, as := range answers {
				for _, a := range as {
					if !bytes.Equal(a.Body, want[key]) {
						t.Errorf("%s: wrong body %.80s", key, a.Body)
					}
					outcomes[a.Outcome]++
				}
			}
			for i := range 6 {
				tag := fmt.Sprintf("v%d", i)
				heads := f.reg.CountManifest("HEAD", "fleet/app", tag)
				gets := f.reg.CountManifest("GET", "fleet/app", tag)
				// One HEAD for manifest_digest; one GET each for
				// oci_manifest and oci_manifest_config.
				if heads != 1 || gets != 2 {
					t.Errorf("tag %s: registry saw %d HEAD and %d GET of the manifest, want 1 and 2", tag, heads, gets)
				}
			}
			if got := f.reg.Count("GET", "blob"); got != 6 {
				t.Errorf("registry saw %d config blob GETs, want 6", got)
			}
			if outcomes[contract.Miss] != 18 {
				t.Errorf("outcomes %v: want exactly 18 misses, one per key", outcomes)
			}
			if n > 1 && outcomes[contract.Shared] == 0 {
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
	for i := range n {
		wg.Go(func() {
			_, err := f.res[i%3].Answer(context.Background(), request(contract.ManifestDigest, ref))
			errs <- err
		})
	}
	testenv.Eventually(t, "all requests pending", func() bool { return f.pending() == n })
	// The answer is an error, which is not cached: a resolver that asked
	// for the lock only after the holder let it go would fetch again. So
	// the registry answers once the two others wait on the holder.
	// Waiting, not only registered to wait: a resolver registers before
	// its get-or-lock script runs, and one whose script ran after the
	// holder let go would take the lock and fetch again.
	testenv.Eventually(t, "two resolvers waiting on the holder", func() bool { return f.lockWaits() == len(f.res)-1 })
	gate.Release()
	wg.Wait()
	close(errs)
	for err := range errs {
		var ce *contract.Error
		if !errors.As(err, &ce) || ce.Code != 404 {
			t.Fatalf("want 404, got %v", err)
		}
	}
	// HEAD fails with 404, then the GET fallback: one of each.
	if h, g := f.reg.CountManifest("HEAD", "fleet/err", "absent"), f.reg.CountManifest("GET", "fleet/err", "absent"); h != 1 || g > 1 {
		t.Errorf("registry saw %d HEAD and %d GET for the absent tag, want 1 and at most 1", h, g)
	}
	// Not cached: asking again asks the registry again.
	_, err := f.res[0].Answer(context.Background(), request(contract.ManifestDigest, ref))
	var ce *contract.Error
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
	k := key(t, contract.ManifestDigest, ref)
	rdb := f.redis.Client(t)
	testenv.Must(t, rdb.Set(context.Background(), rediscache.LockKey(k), "dead-worker", time.Minute).Err(), "planting a dead lock")

	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			a, err := f.res[i%3].Answer(context.Background(), request(contract.ManifestDigest, ref))
			if err != nil {
				t.Errorf("request failed: %v", err)
				return
			}
			if want := `{"digest":"` + img.Digest + `"}`; string(a.Body) != want {
				t.Errorf("body %s, want %s", a.Body, want)
			}
		})
	}
	wg.Wait()
	if ttl := rdb.PTTL(context.Background(), rediscache.LockKey(k)).Val(); ttl <= 0 {
		t.Fatalf("the planted lock is gone (PTTL %s): the test did not test a dead holder", ttl)
	}
	// Each resolver took over on its own, at most once (singleflight).
	if h := f.reg.CountManifest("HEAD", "fleet/dead", "v1"); h < 1 || h > 3 {
		t.Errorf("registry saw %d HEADs, want 1 to 3 (one per resolver at most)", h)
	}
}

// TestFleetDeadHolderTakeoverWaitsForASlot: when the wait for a dead
// holder ends while the registry's one slot is busy, the takeover waits
// for the slot as a new miss would, instead of failing its callers with
// a 503 at once (what kill -9 under load showed).
func TestFleetDeadHolderTakeoverWaitsForASlot(t *testing.T) {
	f := startFleet(t, 1, 300*time.Millisecond, WithConcurrency(8, 1))
	r := f.res[0]
	img := f.reg.PushImage(t, "fleet/dead", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.PushImage(t, "fleet/busy", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("fleet/dead", "v1")
	k := key(t, contract.ManifestDigest, ref)
	rdb := f.redis.Client(t)
	testenv.Must(t, rdb.Set(context.Background(), rediscache.LockKey(k), "dead-worker", time.Minute).Err(), "planting a dead lock")

	dead := make(chan reply, 1)
	go func() {
		a, err := r.Answer(context.Background(), request(contract.ManifestDigest, ref))
		dead <- reply{a: a, err: err}
	}()
	testenv.Eventually(t, "the request to wait on the dead holder", func() bool { return f.lockWaits() == 1 })

	// Another image of the registry takes its one slot and keeps it past
	// the end of the wait.
	gate := f.reg.Hold("/fleet/busy/manifests/")
	busy := make(chan error, 1)
	go func() {
		_, err := r.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("fleet/busy", "v1")))
		busy <- err
	}()
	<-gate.Arrived()

	slotUsers := func() int {
		r.slots.mu.Lock()
		defer r.slots.mu.Unlock()
		if rs := r.slots.byRe[f.reg.Host]; rs != nil {
			return rs.users
		}
		return 0
	}
	var early *reply
	testenv.Eventually(t, "the takeover to wait for the busy slot", func() bool {
		select {
		case d := <-dead:
			early = &d
			return true
		default:
			return slotUsers() == 2
		}
	})
	if early != nil {
		gate.Release()
		t.Fatalf("the takeover answered (%s, %v) while the slot was busy: want it to wait for the slot", early.a.Body, early.err)
	}
	gate.Release()
	d := <-dead
	if want := `{"digest":"` + img.Digest + `"}`; d.err != nil || string(d.a.Body) != want {
		t.Fatalf("takeover: %s %v, want %s", d.a.Body, d.err, want)
	}
	if err := <-busy; err != nil {
		t.Fatalf("the busy image: %v", err)
	}
}

// TestFleetHolderStops: a holder closed mid-fetch answers 503 and abandons
// its lock, and the waiting resolver fetches at once, not after its (here
// one-minute) wait.
func TestFleetHolderStops(t *testing.T) {
	f := startFleet(t, 1, time.Minute)
	img := f.reg.PushImage(t, "fleet/stop", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("fleet/stop", "v1")
	gate := f.reg.Hold("/manifests/v1")

	holder := f.res[0]
	first := make(chan error, 1)
	go func() {
		_, err := holder.Answer(context.Background(), request(contract.ManifestDigest, ref))
		first <- err
	}()
	<-gate.Arrived()
	other := f.add(t, time.Minute)
	second := make(chan reply, 1)
	go func() {
		a, err := other.Answer(context.Background(), request(contract.ManifestDigest, ref))
		second <- reply{a: a, err: err}
	}()
	testenv.Eventually(t, "the other resolver waiting on the holder", func() bool { return f.lockWaits() == 1 })

	holder.Close()
	var ce *contract.Error
	if err := <-first; !errors.As(err, &ce) || ce.Code != 503 {
		t.Errorf("first request: want 503 from the closed holder, got %v", err)
	}
	gate.Release()
	r := <-second
	if want := `{"digest":"` + img.Digest + `"}`; r.err != nil || string(r.a.Body) != want || r.a.Outcome != contract.Miss {
		t.Errorf("second answer %s (%s, %v), want %s (miss)", r.a.Body, r.a.Outcome, r.err, want)
	}
}

// TestFleetRedisDown: without Redis the lock is off and each resolver
// falls back to its own singleflight: no request fails, and each key is
// fetched at most once per resolver.
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
	f.burst(t, images, 20) // fails the test on any error
	for i := range 2 {
		tag := fmt.Sprintf("v%d", i)
		if h := f.reg.CountManifest("HEAD", "fleet/down", tag); h < 1 || h > 3 {
			t.Errorf("tag %s: %d HEADs, want 1 to 3 (one per resolver at most)", tag, h)
		}
	}
}

// settled waits until rs have no resolution left, their Redis stores
// included: a reply no longer waits for them.
func settled(t testing.TB, rs ...*Resolver) {
	t.Helper()
	testenv.Eventually(t, "resolutions and their stores to end", func() bool {
		for _, r := range rs {
			if r.flights.keys() != 0 {
				return false
			}
		}
		return true
	})
}

// TestQueuedHolderLetsTheFleetFetch: a miss that takes the fleet lock
// while every fetch slot of its worker is busy holds it only for a
// quarter of its --lock-wait: then it gives the lock up, and another
// worker's waiter (whose own wait is far longer) fetches with its own
// slots, while the first worker's queue is still held.
func TestQueuedHolderLetsTheFleetFetch(t *testing.T) {
	f := &fleet{reg: testenv.StartRegistry(t), redis: testenv.StartRedis(t)}
	queued := f.add(t, 20*time.Second, WithConcurrency(1, 1)) // holds the lock 5 s at most
	other := f.add(t, time.Minute)
	f.reg.PushImage(t, "queue/busy", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.PushImage(t, "queue/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("queue/app", "v1")
	gate := f.reg.Hold("queue/busy/manifests/")
	go func() {
		_, _ = queued.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("queue/busy", "v1")))
	}()
	<-gate.Arrived()

	go func() { _, _ = queued.Answer(context.Background(), request(contract.ManifestDigest, ref)) }()
	admin := f.redis.Client(t)
	lock := rediscache.LockKey(key(t, contract.ManifestDigest, ref))
	testenv.Eventually(t, "the queued miss holding the lock", func() bool {
		return admin.Exists(context.Background(), lock).Val() == 1
	})
	answered := make(chan error, 1)
	start := time.Now()
	go func() {
		a, err := other.Answer(context.Background(), request(contract.ManifestDigest, ref))
		if err == nil && a.Outcome != contract.Miss {
			err = fmt.Errorf("answered %s, want a fetch of its own", a.Outcome)
		}
		answered <- err
	}()
	// Without the bound, the lock is held for the queued miss's whole
	// slot wait (20 s), and the other worker's waiter waits for it.
	select {
	case err := <-answered:
		testenv.Must(t, err, "the other worker's answer")
	case <-time.After(15 * time.Second):
		t.Fatalf("the other worker waited %v on a lock held by a queued miss", time.Since(start).Round(time.Millisecond))
	}
	gate.Release()
	settled(t, queued, other)
}
