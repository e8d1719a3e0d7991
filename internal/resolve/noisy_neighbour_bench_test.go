package resolve

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/bench"
	"github.com/regcap/regcap/internal/testenv"
)

// BenchmarkNoisyNeighbour measures the latency of misses for a healthy
// registry (memory tier off, no Redis: every request is a HEAD) alone,
// then beside each abuse the bulkheads are for, each in a resolver of
// its own, and reports p50 and p99 and their ratios to the alone case of
// the same run:
//
//	go test -run '^$' -bench NoisyNeighbour -benchtime 400x ./internal/resolve/
//
// The abuses: a rollout of 2,000 callers of one image on a registry that
// accepts and never answers; 200 distinct images on it; 100 distinct
// images on each of four such registries; and 1,000 requests with a
// platform header of 1 MB (refused, 400).
func BenchmarkNoisyNeighbour(b *testing.B) {
	reg := testenv.StartRegistry(b)
	reg.PushImage(b, "ok/app", "v1", testenv.OCIManifest, "linux/amd64")
	healthy := request(contract.ManifestDigest, reg.Ref("ok/app", "v1"))
	var alone bench.Stats
	for _, c := range []struct {
		name  string
		abuse func(b *testing.B, r *Resolver) (stop func())
	}{
		{"alone", func(*testing.B, *Resolver) func() { return func() {} }},
		{"rollout-on-hanging-registry", func(b *testing.B, r *Resolver) func() {
			return hang(b, r, 1, 2000, 0)
		}},
		{"200-images-on-hanging-registry", func(b *testing.B, r *Resolver) func() {
			return hang(b, r, 1, 0, 200)
		}},
		{"4-hanging-registries", func(b *testing.B, r *Resolver) func() {
			return hang(b, r, 4, 0, 100)
		}},
		{"1MB-platform-headers", func(b *testing.B, r *Resolver) func() {
			p := strings.Repeat("l", 1<<20)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for i := 0; ctx.Err() == nil && i < 1000; i++ {
						_, _ = r.Answer(ctx, Request{Function: contract.OCIManifestConfig, Payload: healthy.Payload, Platform: p})
					}
				})
			}
			return func() { cancel(); wg.Wait() }
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := New(fetcherOf(), WithPlatform(amd64), WithMemory(0), WithFetchTimeout(time.Minute))
			for range 50 { // warm the transport and the decoded request
				_, _ = r.Answer(context.Background(), healthy)
			}
			stop := c.abuse(b, r)
			lat := make([]time.Duration, 0, b.N)
			failed := 0
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := r.Answer(context.Background(), healthy); err != nil {
					failed++
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			stop()
			r.Close()
			slices.Sort(lat)
			s := bench.Summarise(lat, failed, 0)
			b.ReportMetric(float64(s.P50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(s.P99.Microseconds()), "p99-µs")
			b.ReportMetric(float64(failed), "failed")
			if c.name == "alone" {
				alone = s
			} else if alone.P50 > 0 {
				b.ReportMetric(float64(s.P50)/float64(alone.P50), "p50/alone")
				b.ReportMetric(float64(s.P99)/float64(alone.P99), "p99/alone")
			}
		})
	}
}

// hang starts, on n registries that never answer, rollout callers of one
// image and distinct images each, and returns once they are all waiting;
// stop ends them.
func hang(b *testing.B, r *Resolver, n, rollout, distinct int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	want := 0
	for range n {
		h := testenv.ListenHanging(b)
		for i := range rollout + distinct {
			ref := h.Addr() + "/rollout/app:v1"
			if i >= rollout {
				ref = fmt.Sprintf("%s/many/app%d:v1", h.Addr(), i)
			}
			want++
			wg.Go(func() { _, _ = r.Answer(ctx, request(contract.ManifestDigest, ref)) })
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Pending() < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return func() { cancel(); wg.Wait() }
}
