package ha

import (
	"testing"
	"time"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// The worker's log lines that begin and end a Redis outage.
const (
	redisDown = "redis unavailable"
	redisUp   = "redis available again"
)

// TestRedisFailover kills a Redis master with SIGKILL under load from
// three workers, in a Redis Cluster (its replica is promoted) and in a
// Sentinel set (the sentinels fail over). No request may fail, and keys
// asked for outside the failover are fetched once for the whole fleet.
func TestRedisFailover(t *testing.T) {
	testenv.Long(t, "Redis node kills under load")
	cases := []struct {
		name  string
		start func(t *testing.T) (url string, kill func() (recovered func() bool))
	}{
		{"redis cluster", func(t *testing.T) (string, func() func() bool) {
			c := testenv.StartRedisCluster(t, 3, 1)
			return c.URL(), func() func() bool {
				master, replica := c.Master(t)
				master.Stop()
				return replica.IsMaster
			}
		}},
		{"redis sentinel", func(t *testing.T) (string, func() func() bool) {
			s := testenv.StartRedisSentinel(t)
			return s.URL(), func() func() bool {
				s.Master.Stop()
				return func() bool { return s.Replica.IsMaster() && s.MasterAddr() == s.Replica.Addr() }
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url, kill := tc.start(t)
			nats := testenv.StartNATS(t)
			spec := workerSpec{NATSURL: nats.ClientURL(), RedisURL: url}
			f := startFleet(t, 400, []workerSpec{spec, spec, spec}, worker.Config{})
			var clients []*client.Client
			for range 3 {
				clients = append(clients, testenv.Client(t, nats.ClientURL()))
			}
			l := f.run(t, clients, 40*time.Millisecond)
			time.Sleep(3 * time.Second)

			w := window{killed: time.Now(), atKill: l.counts()}
			promoted := kill()
			testenv.Eventually(t, "the replica to be promoted", promoted)
			w.recovered = f.recovery(t, w.killed, redisDown, redisUp)
			w.atRecovery = l.counts()
			time.Sleep(3 * time.Second)
			l.stop()
			l.report(t, "kill -9 the "+tc.name+" master", w, 0)
		})
	}
}
