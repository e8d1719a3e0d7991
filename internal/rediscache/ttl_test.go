package rediscache_test

import (
	"context"
	"testing"
	"time"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/testenv"
)

// TestImmutableTTL: with --cache-ttl 1m and --immutable-ttl 1h, an answer
// for a digest reference lives an hour in Redis and one for a tag a
// minute.
func TestImmutableTTL(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	rd := testenv.StartRedis(t)
	testenv.StartWorker(t, testenv.WorkerConfig{NATSURL: ns.ClientURL(), RedisAddr: rd.Addr(),
		QueueOpts: []queue.Option{queue.WithTTL(time.Minute, time.Hour)}})
	cli := testenv.Client(t, ns.ClientURL())
	img := reg.PushImage(t, "ttl/app", "v1", testenv.OCIManifest, "linux/amd64")
	rdb := rd.Client(t)

	for _, c := range []struct {
		ref      string
		min, max time.Duration
	}{
		{reg.Ref("ttl/app", "v1"), 50 * time.Second, time.Minute},
		{reg.Ref("ttl/app", img.Digest), 59 * time.Minute, time.Hour},
	} {
		if _, err := cli.Image(context.Background(), client.OCIManifest, c.ref); err != nil {
			t.Fatalf("%s: %v", c.ref, err)
		}
		key := handlers.Request{Function: handlers.OCIManifest, Ref: mustRef(t, c.ref)}.Key()
		left, err := rdb.PTTL(context.Background(), key).Result()
		testenv.Must(t, err, "PTTL %s", key)
		if left < c.min || left > c.max {
			t.Errorf("%s: Redis TTL %s, want between %s and %s", c.ref, left, c.min, c.max)
		}
	}
}
