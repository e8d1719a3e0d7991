package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// BenchmarkFrontHitPath measures the NATS front's own cost: a request
// answered by a resolver that costs nothing, from Lookup inside the
// callback (a memory hit) and from Resolve on a goroutine (the hand-off
// every Redis hit or miss pays), against a plain NATS echo responder with
// a reply of the same size on the same server: the floor. The whole
// worker's hit path, memory and Redis tiers included, is BenchmarkHitPath
// in test/e2e.
//
//	go test -run '^$' -bench FrontHitPath -benchtime 3s ./internal/queue/
func BenchmarkFrontHitPath(b *testing.B) {
	ns := testenv.StartNATS(b)
	payload := []byte(`"127.0.0.1:5000/bench:v1"`)
	body := []byte(`{"digest":"sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"}`)
	answer := resolve.Answer{Body: body, Outcome: contract.Hit}
	for _, conc := range []int{1, 32} {
		b.Run(fmt.Sprintf("echo/c=%d", conc), func(b *testing.B) {
			testenv.BenchEcho(b, ns.ClientURL(), conc, payload, body)
		})
		for _, path := range []struct {
			name string
			res  queue.Resolver
		}{
			{"in-callback", benchResolver{answer: answer, inCallback: true}},
			{"hand-off", benchResolver{answer: answer}},
		} {
			b.Run(fmt.Sprintf("%s/c=%d", path.name, conc), func(b *testing.B) {
				srv := queue.New(testenv.Connect(b, ns.ClientURL()), path.res)
				testenv.Must(b, srv.Start(), "starting the front")
				cli := testenv.Client(b, ns.ClientURL())
				testenv.RunParallel(b, conc, func() error {
					r, err := cli.Call(context.Background(), contract.ManifestDigest, payload)
					if err == nil && r.Cache != contract.Hit {
						err = fmt.Errorf("not a hit: %s", r.Cache)
					}
					return err
				})
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			})
		}
	}
}

// benchResolver answers every request at once, from Lookup or from
// Resolve: no bookkeeping to weigh on the front's figures.
type benchResolver struct {
	answer     resolve.Answer
	inCallback bool
}

func (r benchResolver) Lookup(req resolve.Request) (resolve.Answer, *resolve.Miss, error) {
	if r.inCallback {
		return r.answer, nil, nil
	}
	return resolve.Answer{}, &resolve.Miss{Request: req}, nil
}

func (r benchResolver) Resolve(context.Context, *resolve.Miss) (resolve.Answer, error) {
	return r.answer, nil
}
