// Package bench measures a regcap fleet as its users see it, request and
// reply over NATS, side by side with a plain NATS echo on the same server:
// the floor any NATS request-reply service can reach on that machine.
package bench

import (
	"math"
	"slices"
	"time"

	"github.com/regcap/regcap/contract"
)

// Stats are the figures of one measured load.
type Stats struct {
	// Requests answered successfully; Errors failed. Only the former count
	// in throughput and latencies.
	Requests int `json:"requests"`
	Errors   int `json:"errors"`
	// FirstError describes the first failure, if any.
	FirstError string        `json:"first_error,omitempty"`
	Elapsed    time.Duration `json:"-"`
	Seconds    float64       `json:"seconds"`
	Throughput float64       `json:"throughput_per_second"`
	P50        time.Duration `json:"-"`
	P90        time.Duration `json:"-"`
	P99        time.Duration `json:"-"`
	Max        time.Duration `json:"-"`
	// Latencies in microseconds, for scripts.
	P50us float64 `json:"p50_us"`
	P90us float64 `json:"p90_us"`
	P99us float64 `json:"p99_us"`
	MaxUs float64 `json:"max_us"`
	// RunThroughputs are the throughputs of each run when Stats is a
	// median of several (MedianStats), to show their spread.
	RunThroughputs []float64 `json:"run_throughputs,omitempty"`
	// Cache counts regcap replies by Regcap-Cache (hit, miss, shared), so
	// that a "warm" figure can be checked to be made of hits.
	Cache map[contract.Outcome]int `json:"cache,omitempty"`
}

// Summarise computes the figures for latencies of successful requests
// measured over elapsed. It sorts latencies in place.
func Summarise(latencies []time.Duration, errors int, elapsed time.Duration) Stats {
	slices.Sort(latencies)
	s := Stats{Requests: len(latencies), Errors: errors, Elapsed: elapsed, Seconds: elapsed.Seconds()}
	if elapsed > 0 {
		s.Throughput = float64(len(latencies)) / elapsed.Seconds()
	}
	s.P50 = Percentile(latencies, 50)
	s.P90 = Percentile(latencies, 90)
	s.P99 = Percentile(latencies, 99)
	if n := len(latencies); n > 0 {
		s.Max = latencies[n-1]
	}
	s.P50us, s.P90us, s.P99us, s.MaxUs = us(s.P50), us(s.P90), us(s.P99), us(s.Max)
	return s
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Percentile returns the p-th percentile (0 < p ≤ 100) of sorted by the
// nearest-rank method: the smallest value with at least p% of the samples
// at or below it. It never interpolates, so it is always a latency that
// was observed. Zero for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Ratio compares regcap with echo: Throughput is regcap's share of the
// echo throughput (1 = as fast as the floor); the latency ratios are how
// many times echo's latency regcap takes (1 = the floor).
type Ratio struct {
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
}

// Compare returns regcap's figures relative to echo's. A ratio whose
// denominator is zero is 0 (no data), never Inf or NaN, so that it always
// encodes as JSON.
func Compare(regcap, echo Stats) Ratio {
	return Ratio{
		Throughput: div(regcap.Throughput, echo.Throughput),
		P50:        div(float64(regcap.P50), float64(echo.P50)),
		P99:        div(float64(regcap.P99), float64(echo.P99)),
	}
}

func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// Median returns the median of xs (the mean of the two middle values for an
// even count), for summarising repeated runs. It does not modify xs.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
