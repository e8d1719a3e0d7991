package client_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/internal/testenv"
)

// BenchmarkCall measures a call answered at once by a plain responder on
// an embedded NATS server: what the client itself costs on the hit path
// (the retry machinery included), serially and with 32 calls in flight.
//
//	go test -run '^$' -bench Call ./client/
func BenchmarkCall(b *testing.B) {
	ns := testenv.StartNATS(b)
	nc := testenv.Connect(b, ns.ClientURL())
	_, err := nc.Subscribe("kubewarden.oci.v1.manifest_digest", func(m *natsMsg) { _ = m.RespondMsg(digestReply(m)) })
	testenv.Must(b, err, "subscribe")
	testenv.Must(b, nc.Flush(), "flush")
	c := client.New(testenv.Connect(b, ns.ClientURL()))
	for _, conc := range []int{1, 32} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			b.ReportAllocs()
			var wg sync.WaitGroup
			work := make(chan struct{}, b.N)
			for range b.N {
				work <- struct{}{}
			}
			close(work)
			b.ResetTimer()
			for range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range work {
						if _, err := c.Digest(context.Background(), "busybox"); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
