package resolve

import (
	"fmt"
	"sync/atomic"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
)

// TestFleetOnRedisCluster: three resolvers sharing a Redis Cluster of
// three masters (formed with redis-cli --cluster create) fetch each key
// once for the fleet, as on one node: every command is single-key or
// hash-tagged, the lock's release script included, and no command fails.
func TestFleetOnRedisCluster(t *testing.T) {
	cluster := testenv.StartRedisCluster(t, 3, 0)
	f := &fleet{reg: testenv.StartRegistry(t), url: cluster.URL()}
	var redisErrors atomic.Int64
	for range 3 {
		f.addWith(t, 0, []rediscache.Option{rediscache.WithErrorHook(func(op string) { redisErrors.Add(1); t.Logf("redis error on %s", op) })}, WithLogger(zaptest.NewLogger(t)))
	}
	var images []string
	for i := range 6 {
		tag := fmt.Sprintf("v%d", i)
		f.reg.PushImage(t, "cluster/app", tag, testenv.OCIManifest, "linux/amd64")
		images = append(images, f.reg.Ref("cluster/app", tag))
	}
	f.reg.ResetCounts()
	answers := f.burst(t, images, 10)
	outcomes := map[contract.Outcome]int{}
	for _, as := range answers {
		for _, a := range as {
			outcomes[a.Outcome]++
		}
	}
	for i := range 6 {
		tag := fmt.Sprintf("v%d", i)
		if h, g := f.reg.CountManifest("HEAD", "cluster/app", tag), f.reg.CountManifest("GET", "cluster/app", tag); h != 1 || g != 2 {
			t.Errorf("tag %s: %d HEAD and %d GET, want 1 and 2 (one fetch per key for the fleet)", tag, h, g)
		}
	}
	if outcomes[contract.Miss] != 18 || outcomes[contract.Shared] == 0 {
		t.Errorf("outcomes %v: want 18 misses and shared answers", outcomes)
	}
	if n := redisErrors.Load(); n != 0 {
		t.Errorf("%d Redis commands failed on the cluster", n)
	}
	t.Logf("Redis Cluster of 3 masters, 3 resolvers, 180 requests over 18 keys: outcomes %v", outcomes)
}
