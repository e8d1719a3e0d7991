package rediscache

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/internal/testenv"
)

// TestClusterOutageIsPerShardUntilFailover kills a Cluster master that
// has a replica: its keys miss (the shard is down, probed once a second)
// while the other masters' keys are still read, and Available stays true;
// once the replica is promoted, the dead address is forgotten (no key is
// sent to it any more, so only the sweep can end its outage) and the
// shard's keys are stored and read again.
func TestClusterOutageIsPerShardUntilFailover(t *testing.T) {
	testenv.Long(t, "a Redis Cluster with replicas, one master killed and failed over")
	cluster := testenv.StartRedisCluster(t, 3, 1)
	rdb, err := NewClient(cluster.URL(), ModeAuto)
	testenv.Must(t, err, "cluster client")
	t.Cleanup(func() { _ = rdb.Close() })
	core, logs := observer.New(zap.InfoLevel)
	c := New(rdb, WithLogger(zap.New(core)))
	t.Cleanup(c.Close)
	ctx := context.Background()

	master, replica := cluster.Master(t)
	cc := rdb.(*redis.ClusterClient)
	var dead, healthy []string
	for i := range 60 {
		key := fmt.Sprintf("shard-test/k%d", i)
		node, err := cc.MasterForKey(ctx, key)
		testenv.Must(t, err, "master of %s", key)
		if node.Options().Addr == master.Addr() {
			dead = append(dead, key)
		} else {
			healthy = append(healthy, key)
		}
	}
	if len(dead) == 0 || len(healthy) == 0 {
		t.Fatalf("%d keys on the master to kill, %d on the others", len(dead), len(healthy))
	}
	entry := func() Entry {
		now := time.Now()
		return Entry{Body: []byte("answer"), Fetched: now, Fresh: now.Add(time.Minute), Expires: now.Add(time.Minute)}
	}
	for _, k := range healthy {
		c.Set(ctx, k, entry())
	}

	master.Stop()
	testenv.Eventually(t, "the dead shard to be marked down", func() bool {
		_, found := c.Get(ctx, dead[0])
		return !found && c.health.down.Load() == 1
	})
	for _, k := range healthy {
		if _, found := c.Get(ctx, k); !found {
			t.Errorf("%s, on a healthy shard: not read while another master is down", k)
		}
	}
	if !c.Available() {
		t.Error("Available is false while two masters of three answer")
	}

	testenv.Eventually(t, "the replica to be promoted", replica.IsMaster)
	testenv.Eventually(t, "the dead shard's keys to be stored and read again", func() bool {
		c.Set(ctx, dead[0], entry())
		_, found := c.Get(ctx, dead[0])
		return found
	})
	testenv.Eventually(t, "the outage to end", func() bool {
		c.Get(ctx, healthy[0]) // commands that answer let the sweep run
		return c.health.down.Load() == 0
	})
	var back bool
	for _, e := range logs.All() {
		if strings.HasPrefix(e.Message, "redis available again on the cluster shard") && e.ContextMap()["shard"] == master.Addr() {
			back = true
		}
	}
	if !back {
		t.Errorf("no log line ends the dead master's outage: %v", logs.All())
	}
}
