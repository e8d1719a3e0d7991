package resolve

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
)

// countedResolver is a resolver on the fleet's Redis, without a memory
// tier, whose Redis round trips are counted. The get-or-lock script is
// loaded first (on every master of a Cluster): a node's first EVALSHA
// otherwise costs one more round trip (NOSCRIPT, then EVAL), once per
// node and restart.
func (f *fleet) countedResolver(t testing.TB, c *testenv.RoundTrips, opts ...Option) *Resolver {
	url := f.url
	if url == "" {
		url = f.redis.URL()
	}
	rdb, err := rediscache.NewClient(url, rediscache.ModeAuto)
	testenv.Must(t, err, "redis client")
	t.Cleanup(func() { _ = rdb.Close() })
	cache := rediscache.New(rdb)
	testenv.Must(t, cache.Ping(context.Background()), "redis ping and script load")
	rdb.AddHook(c)
	t.Cleanup(cache.Close)
	r := New(fetcherOf(), append([]Option{WithPlatform(amd64), WithMemory(0), WithRedis(cache, 0)}, opts...)...)
	t.Cleanup(r.Close)
	return r
}

// TestRedisRoundTrips pins the Redis round trips of each path, on a
// single Redis, a Sentinel set and a Cluster: a hit costs one; a miss one
// before the fetch (the get-or-lock script: the value, or the lock, or
// who holds it) and one after (store, notice and release); a shared
// answer one (the same script, which finds the lock held and marks the
// key), then the holder's notice, which carries its answer. A miss that finds every
// fetch slot of its registry busy still makes one before its fetch: it
// takes the lock, then waits for a slot.
func TestRedisRoundTrips(t *testing.T) {
	for _, shape := range []struct {
		name  string
		start func(t *testing.T) *fleet
	}{
		{"single", func(t *testing.T) *fleet { return startFleet(t, 0, 0) }},
		{"sentinel", func(t *testing.T) *fleet {
			testenv.Long(t, "starts a Redis master, replica and three sentinels")
			return &fleet{reg: testenv.StartRegistry(t), url: testenv.StartRedisSentinel(t).URL()}
		}},
		{"cluster", func(t *testing.T) *fleet {
			testenv.Long(t, "starts a three-node Redis Cluster")
			return &fleet{reg: testenv.StartRegistry(t), url: testenv.StartRedisCluster(t, 3, 0).URL()}
		}},
	} {
		t.Run(shape.name, func(t *testing.T) { testRoundTrips(t, shape.start(t)) })
	}
}

func testRoundTrips(t *testing.T, f *fleet) {
	f.reg.PushImage(t, "rtt/app", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.PushImage(t, "rtt/app", "warm", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("rtt/app", "v1")
	req := request(contract.ManifestDigest, ref)
	var ca, cb testenv.RoundTrips
	a, b := f.countedResolver(t, &ca), f.countedResolver(t, &cb)
	k := key(t, contract.ManifestDigest, ref)
	// New connections' handshakes (HELLO, CLIENT SETINFO) are no
	// answer's cost: one answer each first, so that the pools are warm.
	for _, r := range []*Resolver{a, b} {
		_, err := r.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("rtt/app", "warm")))
		testenv.Must(t, err, "warming up")
	}

	answer := func(r *Resolver, c *testenv.RoundTrips, want contract.Outcome) int64 {
		t.Helper()
		before := c.N.Load()
		ans, err := r.Answer(context.Background(), req)
		if err != nil || ans.Outcome != want {
			t.Fatalf("answer %v %v, want %s", ans.Outcome, err, want)
		}
		// The store after a miss runs once the caller is answered.
		settled(t, r)
		return c.N.Load() - before
	}
	if n := answer(a, &ca, contract.Miss); n != 2 {
		t.Errorf("miss: %d round trips, want 2", n)
	}
	if n := answer(b, &cb, contract.Hit); n != 1 {
		t.Errorf("hit: %d round trips, want 1", n)
	}

	admin, err := rediscache.NewClient(f.urlOrRedis(), rediscache.ModeAuto)
	testenv.Must(t, err, "redis client")
	defer admin.Close()
	testenv.Must(t, admin.Del(context.Background(), k).Err(), "forgetting the key")
	gate := f.reg.Hold("/manifests/")
	held := make(chan error, 1)
	go func() { _, err := a.Answer(context.Background(), req); held <- err }()
	<-gate.Arrived()
	f.res = []*Resolver{a, b}
	shared := make(chan int64, 1)
	go func() { shared <- answer(b, &cb, contract.Shared) }()
	testenv.Eventually(t, "b waiting on a's fetch", func() bool { return f.lockWaits() == 1 })
	gate.Release()
	testenv.Must(t, <-held, "holder")
	if n := <-shared; n != 1 {
		t.Errorf("shared: %d round trips, want 1", n)
	}

	// One fetch slot: a miss behind another's fetch waits for it, holding
	// its key's lock, and then makes no second look before fetching.
	var cc testenv.RoundTrips
	c := f.countedResolver(t, &cc, WithConcurrency(1, 1))
	_, err = c.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("rtt/app", "warm")))
	testenv.Must(t, err, "warming up")
	f.reg.PushImage(t, "rtt/busy", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.PushImage(t, "rtt/app", "queued", testenv.OCIManifest, "linux/amd64")
	busy := f.reg.Hold("rtt/busy/manifests/")
	first := make(chan error, 1)
	go func() {
		_, err := c.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("rtt/busy", "v1")))
		first <- err
	}()
	<-busy.Arrived()
	before := cc.N.Load()
	queued := make(chan error, 1)
	go func() {
		_, err := c.Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("rtt/app", "queued")))
		queued <- err
	}()
	qk := rediscache.LockKey(key(t, contract.ManifestDigest, f.reg.Ref("rtt/app", "queued")))
	testenv.Eventually(t, "the queued miss holding its lock while it waits for the slot", func() bool {
		return admin.Exists(context.Background(), qk).Val() == 1
	})
	busy.Release()
	testenv.Must(t, <-first, "the fetch holding the slot")
	testenv.Must(t, <-queued, "the miss waiting for the slot")
	settled(t, c)
	// The first fetch's store, then the queued miss's two.
	if n := cc.N.Load() - before - 1; n != 2 {
		t.Errorf("miss behind a busy slot: %d round trips, want 2", n)
	}
}

// urlOrRedis is the fleet's Redis URL.
func (f *fleet) urlOrRedis() string {
	if f.url != "" {
		return f.url
	}
	return f.redis.URL()
}

// BenchmarkRedisRoundTrips reports the Redis round trips of a hit and of
// a miss (rtt/op), with the memory tier off:
//
//	go test -run '^$' -bench RedisRoundTrips ./internal/resolve/
func BenchmarkRedisRoundTrips(b *testing.B) {
	f := &fleet{reg: testenv.StartRegistry(b), redis: testenv.StartRedis(b)}
	f.reg.PushImage(b, "rtt/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("rtt/app", "v1")
	req := request(contract.ManifestDigest, ref)
	r, err := capabilityKey(ref)
	testenv.Must(b, err, "key")
	plain := f.redis.Client(b)
	for _, c := range []struct {
		name   string
		before func()
	}{
		{"hit", func() {}},
		{"miss", func() { _ = plain.Del(context.Background(), r).Err() }},
	} {
		b.Run(c.name, func(b *testing.B) {
			var n testenv.RoundTrips
			res := f.countedResolver(b, &n)
			if _, err := res.Answer(context.Background(), req); err != nil {
				b.Fatal(err)
			}
			// A resolution answers, then stores: until its store ends, a
			// request for its key is answered from it, without Redis.
			settled(b, res)
			var counted int64
			for b.Loop() {
				b.StopTimer()
				c.before()
				start := n.N.Load()
				b.StartTimer()
				if _, err := res.Answer(context.Background(), req); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				settled(b, res) // a miss's store, sent after the reply, is its cost too
				counted += n.N.Load() - start
				b.StartTimer()
			}
			b.ReportMetric(float64(counted)/float64(b.N), "rtt/op")
		})
	}
}

// BenchmarkColdMiss profiles the miss path of manifest_digest: a new tag
// per request, through Redis and the fleet lock, to an in-process
// registry. Profile it with
//
//	go test -run '^$' -bench ColdMiss -cpuprofile cpu.out ./internal/resolve/
func BenchmarkColdMiss(b *testing.B) {
	f := &fleet{reg: testenv.StartRegistry(b), redis: testenv.StartRedis(b)}
	img := f.reg.PushImage(b, "cold/app", "v0", testenv.OCIManifest, "linux/amd64")
	var n testenv.RoundTrips
	r := f.countedResolver(b, &n)
	tags := make([]Request, b.N)
	for i := range tags {
		tag := "t" + strconv.Itoa(i)
		f.reg.PushManifest(b, "cold/app", tag, testenv.OCIManifest, img.Manifest)
		tags[i] = request(contract.ManifestDigest, f.reg.Ref("cold/app", tag))
	}
	var next atomic.Int64
	b.ResetTimer()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Answer(context.Background(), tags[next.Add(1)-1]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
