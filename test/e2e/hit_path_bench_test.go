package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// BenchmarkHitPath measures a cached digest request through NATS to a
// worker, from the memory tier and from Redis (memory tier off), against
// a plain NATS echo responder with a reply of the same size on the same
// server: the floor. It needs the whole worker: the tiers are the
// resolver's, the hand-off the front's. Compare the three in one run:
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
