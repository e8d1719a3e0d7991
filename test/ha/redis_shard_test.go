package ha

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// TestClusterShardDownLeavesOtherShardsShared kills one master of a
// three-master Redis Cluster that has no replica for it (and is told to
// serve without full slot coverage), so that its slots stay down. Two
// resolvers, each with its own Redis client and memory, as two workers
// have, then ask for the same new keys at once, a key of the dead shard
// before each batch of keys of the healthy ones: the dead shard's keys
// are answered from the registry (each resolver on its own, no error),
// while every key on a healthy shard is fetched once for both, and a
// third resolver reads it from Redis.
func TestClusterShardDownLeavesOtherShardsShared(t *testing.T) {
	testenv.Long(t, "a Redis Cluster and a registry, one master killed")
	cluster := testenv.StartRedisCluster(t, 3, 0)
	ctx := context.Background()
	for _, n := range cluster.Nodes {
		testenv.Must(t, n.Client(t).ConfigSet(ctx, "cluster-require-full-coverage", "no").Err(), "config set on %s", n.Addr())
	}
	reg := testenv.StartRegistry(t)
	const n = 90
	var images []string
	for i := range n {
		tag := fmt.Sprintf("v%d", i)
		reg.PushImage(t, repo, tag, testenv.OCIManifest, "linux/amd64")
		images = append(images, reg.Ref(repo, tag))
	}
	platform := v1.Platform{OS: "linux", Architecture: "amd64"}
	fetcher := handlers.NewFetcher(registry.New(registry.WithUserAgent("regcap/test")))
	request := func(image string) resolve.Request {
		b, _ := json.Marshal(image)
		return resolve.Request{Function: contract.OCIManifest, Payload: b}
	}
	// What the registry answers, to compare every answer with.
	want := make([][]byte, n)
	for i, img := range images {
		b, _ := json.Marshal(img)
		req, err := handlers.ParseRequest(contract.OCIManifest, b, "", platform)
		testenv.Must(t, err, "parsing %s", img)
		want[i], err = fetcher.Fetch(ctx, req)
		testenv.Must(t, err, "fetching %s", img)
	}

	var redisErrors atomic.Int64
	core, logs := observer.New(zap.InfoLevel)
	newResolver := func() *resolve.Resolver {
		c, err := rediscache.Open(cluster.URL(), rediscache.ModeAuto,
			rediscache.WithLogger(zap.New(core)),
			rediscache.WithErrorHook(func(string) { redisErrors.Add(1) }))
		testenv.Must(t, err, "redis client")
		t.Cleanup(c.Close)
		r := resolve.New(fetcher, resolve.WithRedis(c, 0), resolve.WithPlatform(platform))
		t.Cleanup(r.Close)
		return r
	}
	res := []*resolve.Resolver{newResolver(), newResolver()}

	// The key of each image, and the master serving its slot.
	rdb, err := rediscache.NewClient(cluster.URL(), rediscache.ModeCluster)
	testenv.Must(t, err, "cluster client")
	t.Cleanup(func() { _ = rdb.Close() })
	cc := rdb.(*redis.ClusterClient)
	masterOf := func(key string) string {
		node, err := cc.MasterForKey(ctx, key)
		testenv.Must(t, err, "master of %s", key)
		return node.Options().Addr
	}
	byMaster := map[string][]int{}
	for i, img := range images {
		key, err := res[0].Key(request(img))
		testenv.Must(t, err, "key of %s", img)
		byMaster[masterOf(key)] = append(byMaster[masterOf(key)], i)
	}
	// The victim is not the node the fleet lock's notices are subscribed
	// on: this test is about the keys, and waiters still find a value
	// by their periodic check when notices are lost.
	subscribed := masterOf("regcap:done:*")
	var victim *testenv.Redis
	for _, node := range cluster.Nodes {
		if node.Addr() != subscribed && len(byMaster[node.Addr()]) > 0 {
			victim = node
			break
		}
	}
	if victim == nil {
		t.Fatal("no master to kill other than the subscribed one")
	}
	var dead, healthy []int
	for addr, keys := range byMaster {
		if addr == victim.Addr() {
			dead = keys
		} else {
			healthy = append(healthy, keys...)
		}
	}

	// Both resolvers' listeners subscribe, and their slot maps are read,
	// before the kill: a key asked and answered by both.
	warm := healthy[0]
	for _, r := range res {
		_, err := r.Answer(ctx, request(images[warm]))
		testenv.Must(t, err, "warming up")
	}
	healthy = healthy[1:]
	victim.Stop()
	reg.ResetCounts()
	killed := time.Now()

	// ask has both resolvers answer keys at once, and checks every answer.
	var mu sync.Mutex
	outcomes := map[string]map[contract.Outcome]int{"dead": {}, "healthy": {}, "third": {}}
	ask := func(group string, rs []*resolve.Resolver, keys []int) {
		var wg sync.WaitGroup
		for _, r := range rs {
			for _, k := range keys {
				wg.Go(func() {
					a, err := r.Answer(ctx, request(images[k]))
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						t.Errorf("%s key v%d: %v", group, k, err)
						return
					}
					if !bytes.Equal(a.Body, want[k]) {
						t.Errorf("%s key v%d: the answer is not the registry's manifest", group, k)
					}
					outcomes[group][a.Outcome]++
				})
			}
		}
		wg.Wait()
	}
	// A key of the dead shard, then a batch of the healthy shards', in
	// turn: each batch follows a failure (or a skip) on the dead shard.
	const batch = 4
	askedDead, askedHealthy := 0, 0
	for i := 0; i*batch < len(healthy); i++ {
		d := dead[i%len(dead)]
		ask("dead", res, []int{d})
		askedDead++
		hs := healthy[i*batch : min((i+1)*batch, len(healthy))]
		ask("healthy", res, hs)
		askedHealthy += len(hs)
	}
	window := time.Since(killed)

	fetchesOf := func(keys []int) (total int, unshared []string) {
		for _, k := range keys {
			tag := fmt.Sprintf("v%d", k)
			c := reg.CountManifest("GET", repo, tag)
			total += c
			if c != 1 {
				unshared = append(unshared, fmt.Sprintf("%s: %d", tag, c))
			}
		}
		return total, unshared
	}
	healthyFetches, unshared := fetchesOf(healthy)
	deadFetches, _ := fetchesOf(dead)
	if len(unshared) > 0 {
		t.Errorf("%d of %d keys on healthy shards not fetched exactly once for both resolvers: %v", len(unshared), len(healthy), unshared)
	}
	// A third resolver, with memory of its own, reads the healthy
	// shards' keys from Redis.
	third := newResolver()
	ask("third", []*resolve.Resolver{third}, healthy)
	if again, _ := fetchesOf(healthy); again != healthyFetches || outcomes["third"][contract.Hit] != len(healthy) {
		t.Errorf("a third resolver: outcomes %v, %d fetches: want %d hits from Redis and no fetch", outcomes["third"], again-healthyFetches, len(healthy))
	}
	if outcomes["healthy"][contract.Miss] > len(healthy) {
		t.Errorf("healthy outcomes %v: more misses than keys", outcomes["healthy"])
	}
	if !res[0].RedisAvailable() {
		t.Error("Redis reported unavailable while two of three shards answer")
	}
	var down, up int
	for _, e := range logs.All() {
		switch {
		case bytes.Contains([]byte(e.Message), []byte(redisDown)):
			down++
		case bytes.Contains([]byte(e.Message), []byte(redisUp)):
			up++
		}
	}
	t.Logf("one of 3 masters killed (no replica) for %v: %d healthy-shard keys asked by 2 resolvers at once: %d registry fetches (%d not once); %d dead-shard requests on %d keys: %d fetches; outcomes %v; %d Redis errors; %d outage and %d recovery log lines",
		window.Round(time.Millisecond), len(healthy), healthyFetches, len(unshared), askedDead, len(dead), deadFetches, outcomes, redisErrors.Load(), down, up)
}
