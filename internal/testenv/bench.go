package testenv

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// RunParallel runs b.N calls of fn from conc goroutines and reports
// requests per second.
func RunParallel(b *testing.B, conc int, fn func() error) {
	b.Helper()
	b.ReportAllocs()
	work := make(chan struct{}, b.N)
	for i := 0; i < b.N; i++ {
		work <- struct{}{}
	}
	close(work)
	errs := make(chan error, conc)
	start := time.Now()
	b.ResetTimer()
	for g := 0; g < conc; g++ {
		go func() {
			for range work {
				if err := fn(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < conc; g++ {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

// BenchEcho measures the floor any NATS service can reach on this
// machine: conc goroutines asking a plain echo responder, on the server
// at natsURL, that answers reply to payload. Benchmarks of the fronts run
// it beside their own paths so that ratios come from one run.
func BenchEcho(b *testing.B, natsURL string, conc int, payload, reply []byte) {
	b.Helper()
	nc := Connect(b, natsURL)
	sub, err := nc.QueueSubscribe("bench.echo", "echo", func(m *nats.Msg) { _ = m.Respond(reply) })
	Must(b, err, "echo subscribe")
	defer sub.Unsubscribe()
	Must(b, nc.Flush(), "flush")
	cli := Connect(b, natsURL)
	RunParallel(b, conc, func() error {
		_, err := cli.Request("bench.echo", payload, 10*time.Second)
		return err
	})
}
