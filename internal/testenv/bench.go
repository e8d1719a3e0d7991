package testenv

import (
	"testing"
	"time"
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
