package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// BenchmarkHitPath measures a cached digest request through NATS to a
// worker, from the memory tier and from Redis (memory tier off), against
// a plain NATS echo responder with a reply of the same size on the same
// server (the floor of a memory hit), and an echo that reads its reply
// with one Redis GET, in a goroutine per request as a worker hands a
// Redis lookup on (the floor of a Redis hit). It needs the whole worker:
// the tiers are the resolver's, the hand-off the front's. Compare them
// in one run:
//
//	go test -run '^$' -bench HitPath -benchtime 3s ./test/e2e/
//
// The front's own share, over a resolver that costs nothing, is
// BenchmarkFrontHitPath in internal/queue.
func BenchmarkHitPath(b *testing.B) {
	rd := testenv.StartRedis(b)
	ns := testenv.StartNATS(b)
	reg := testenv.StartRegistry(b)
	img := reg.PushImage(b, "bench", "v1", testenv.OCIManifest, "linux/amd64")
	image := reg.Ref("bench", "v1")
	payload := []byte(`"` + image + `"`)
	reply := digestReply(img.Digest)

	for _, conc := range []int{1, 32} {
		b.Run(fmt.Sprintf("echo/c=%d", conc), func(b *testing.B) {
			testenv.BenchEcho(b, ns.ClientURL(), conc, payload, reply)
		})
		b.Run(fmt.Sprintf("redis-echo/c=%d", conc), func(b *testing.B) {
			benchRedisEcho(b, ns.ClientURL(), rd, conc, payload, reply)
		})
		for _, tier := range []struct {
			name     string
			noMemory bool
		}{{"memory-hit", false}, {"redis-hit", true}} {
			b.Run(fmt.Sprintf("%s/c=%d", tier.name, conc), func(b *testing.B) {
				// A TTL longer than any run: every answer measured is a hit.
				w := testworker.Start(b, testworker.Config{NATSURL: ns.ClientURL(), RedisAddr: rd.Addr(), NoMemory: tier.noMemory, Logger: zap.NewNop(),
					Config: worker.Config{CacheTTL: time.Hour}})
				cli := testenv.Client(b, ns.ClientURL())
				if _, err := cli.Image(context.Background(), contract.ManifestDigest, image); err != nil {
					b.Fatal(err)
				}
				testenv.RunParallel(b, conc, func() error {
					r, err := cli.Call(context.Background(), contract.ManifestDigest, payload)
					if err == nil && r.Cache != contract.Hit {
						err = fmt.Errorf("not a hit: %s", r.Cache)
					}
					return err
				})
				b.StopTimer()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = w.Shutdown(ctx)
			})
		}
	}
}

// benchRedisEcho measures a responder that answers each request with the
// value of one Redis GET, on its own connection, in a goroutine per
// request: the floor of a Redis hit.
func benchRedisEcho(b *testing.B, natsURL string, rd *testenv.Redis, conc int, payload, reply []byte) {
	b.Helper()
	rdb := rd.Client(b)
	ctx := context.Background()
	const key = "bench:redis-echo"
	testenv.Must(b, rdb.Set(ctx, key, reply, 0).Err(), "storing the reply")
	nc := testenv.Connect(b, natsURL)
	sub, err := nc.QueueSubscribe("bench.redis-echo", "echo", func(m *nats.Msg) {
		go func() {
			v, err := rdb.Get(ctx, key).Bytes()
			if err != nil {
				v = nil
			}
			_ = m.Respond(v)
		}()
	})
	testenv.Must(b, err, "subscribing")
	defer sub.Unsubscribe()
	testenv.Must(b, nc.Flush(), "flush")
	cli := testenv.Connect(b, natsURL)
	testenv.RunParallel(b, conc, func() error {
		r, err := cli.Request("bench.redis-echo", payload, 10*time.Second)
		if err == nil && len(r.Data) != len(reply) {
			err = fmt.Errorf("redis echo answered %d bytes, want %d", len(r.Data), len(reply))
		}
		return err
	})
}
