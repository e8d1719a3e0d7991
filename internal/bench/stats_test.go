package bench_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/bench"
)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

// seq returns 1ms, 2ms, … n ms, shuffled so that sorting is tested too.
func seq(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = ms(float64((i*7919)%n + 1))
	}
	return out
}

func TestPercentile(t *testing.T) {
	cases := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample is every percentile", []time.Duration{ms(3)}, 99, ms(3)},
		{"p50 of 1..100", seq(100), 50, ms(50)},
		{"p90 of 1..100", seq(100), 90, ms(90)},
		{"p99 of 1..100", seq(100), 99, ms(99)},
		{"p100 is the max", seq(100), 100, ms(100)},
		{"p50 of 1..10", seq(10), 50, ms(5)},
		{"p99 of 1..10 is the max", seq(10), 99, ms(10)},
		{"p90 of 1..1000", seq(1000), 90, ms(900)},
		{"p99 of 1..1000", seq(1000), 99, ms(990)},
		{"nearest rank never interpolates", []time.Duration{ms(1), ms(100)}, 50, ms(1)},
		{"tiny p is the min", seq(100), 0.001, ms(1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sorted := slices.Clone(tc.samples)
			slices.Sort(sorted)
			if got := bench.Percentile(sorted, tc.p); got != tc.want {
				t.Fatalf("p%v = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

func TestSummarise(t *testing.T) {
	cases := []struct {
		name                   string
		samples                []time.Duration
		errors                 int
		elapsed                time.Duration
		wantThroughput         float64
		wantP50, wantP99, wMax time.Duration
	}{
		{"1000 in 2s", seq(1000), 3, 2 * time.Second, 500, ms(500), ms(990), ms(1000)},
		{"errors do not count as throughput", seq(10), 90, time.Second, 10, ms(5), ms(10), ms(10)},
		{"no samples", nil, 5, time.Second, 0, 0, 0, 0},
		{"no time", seq(4), 0, 0, 0, ms(2), ms(4), ms(4)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := bench.Summarise(tc.samples, tc.errors, tc.elapsed)
			if s.Requests != len(tc.samples) || s.Errors != tc.errors {
				t.Errorf("requests %d errors %d", s.Requests, s.Errors)
			}
			if math.Abs(s.Throughput-tc.wantThroughput) > 1e-9 {
				t.Errorf("throughput %v, want %v", s.Throughput, tc.wantThroughput)
			}
			if s.P50 != tc.wantP50 || s.P99 != tc.wantP99 || s.Max != tc.wMax {
				t.Errorf("p50 %v p99 %v max %v, want %v %v %v", s.P50, s.P99, s.Max, tc.wantP50, tc.wantP99, tc.wMax)
			}
			if s.P50us != float64(tc.wantP50)/1e3 || s.MaxUs != float64(tc.wMax)/1e3 {
				t.Errorf("µs figures %v %v", s.P50us, s.MaxUs)
			}
		})
	}
}

func TestCompare(t *testing.T) {
	regcap := bench.Summarise(seq(100), 0, 2*time.Second) // 50/s, p50 50ms, p99 99ms
	echo := bench.Summarise([]time.Duration{ms(25), ms(25), ms(33)}, 0, 30*time.Millisecond)
	cases := []struct {
		name         string
		regcap, echo bench.Stats
		want         bench.Ratio
	}{
		{"regcap slower than echo", regcap, echo, bench.Ratio{Throughput: 0.5, P50: 2, P99: 3}},
		{"same", echo, echo, bench.Ratio{Throughput: 1, P50: 1, P99: 1}},
		{"no echo data gives zeros, not Inf", regcap, bench.Stats{}, bench.Ratio{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := bench.Compare(tc.regcap, tc.echo)
			if math.Abs(got.Throughput-tc.want.Throughput) > 1e-9 || math.Abs(got.P50-tc.want.P50) > 1e-9 || math.Abs(got.P99-tc.want.P99) > 1e-9 {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if _, err := json.Marshal(got); err != nil {
				t.Fatalf("ratio does not encode: %v", err)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	cases := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{4}, 4},
		{[]float64{9, 1, 5}, 5},
		{[]float64{10, 1, 3, 7}, 5},
		{[]float64{2, 2, 100}, 2}, // one outlier run does not move it
	}
	for _, tc := range cases {
		in := append([]float64(nil), tc.in...)
		if got := bench.Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Fatalf("Median modified its input")
			}
		}
	}
}

func TestMedianStats(t *testing.T) {
	runs := []bench.Stats{
		bench.Summarise([]time.Duration{ms(1), ms(2), ms(3)}, 0, time.Second),            // 3/s, p50 2
		bench.Summarise([]time.Duration{ms(10), ms(20), ms(30), ms(40)}, 1, time.Second), // 4/s, p50 20
		bench.Summarise([]time.Duration{ms(5)}, 0, time.Second),                          // 1/s, p50 5
	}
	runs[0].Cache = map[contract.Outcome]int{contract.Hit: 3}
	runs[1].Cache = map[contract.Outcome]int{contract.Hit: 3, contract.Miss: 1}
	runs[1].FirstError = "boom"
	m := bench.MedianStats(runs)
	if m.Throughput != 3 || m.P50 != ms(5) || m.Max != ms(5) || m.P99 != ms(5) {
		t.Fatalf("medians: throughput %v p50 %v p99 %v max %v", m.Throughput, m.P50, m.P99, m.Max)
	}
	if m.Requests != 8 || m.Errors != 1 || m.FirstError != "boom" {
		t.Fatalf("sums: requests %d errors %d first %q", m.Requests, m.Errors, m.FirstError)
	}
	if m.Cache[contract.Hit] != 6 || m.Cache[contract.Miss] != 1 {
		t.Fatalf("cache %v", m.Cache)
	}
	if !slices.Equal(m.RunThroughputs, []float64{3, 4, 1}) {
		t.Fatalf("run throughputs %v, want them in run order", m.RunThroughputs)
	}
	if m.P50us != 5000 {
		t.Fatalf("p50us %v", m.P50us)
	}
}

// TestMeasureCounts checks the load generator's bookkeeping, not its
// speed: a request count is honoured exactly across callers, errors are
// counted apart, and cache outcomes are tallied.
func TestMeasureCounts(t *testing.T) {
	var calls atomic.Int64
	seen := make([]atomic.Int32, 100)
	call := func(_ context.Context, s int) (contract.Outcome, error) {
		calls.Add(1)
		seen[s].Add(1)
		if s%10 == 0 {
			return "", errors.New("scripted failure")
		}
		if s%2 == 0 {
			return contract.Miss, nil
		}
		return contract.Hit, nil
	}
	st := bench.Measure(context.Background(), call, bench.Load{Concurrency: 8, Requests: 100})
	if calls.Load() != 100 {
		t.Fatalf("%d calls, want 100", calls.Load())
	}
	for i := range seen {
		if seen[i].Load() != 1 {
			t.Fatalf("request %d sent %d times", i, seen[i].Load())
		}
	}
	if st.Requests != 90 || st.Errors != 10 || st.FirstError != "scripted failure" {
		t.Fatalf("requests %d errors %d first %q", st.Requests, st.Errors, st.FirstError)
	}
	if st.Cache[contract.Hit] != 50 || st.Cache[contract.Miss] != 40 {
		t.Fatalf("cache %v", st.Cache)
	}
}

// TestMeasureCancelled: a cancelled measurement ends and calls cut off by
// the cancellation are not errors.
func TestMeasureCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	call := func(ctx context.Context, _ int) (contract.Outcome, error) {
		if calls.Add(1) == 20 {
			cancel()
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", nil
	}
	st := bench.Measure(ctx, call, bench.Load{Concurrency: 4, Duration: time.Hour})
	if st.Errors != 0 || st.Requests == 0 {
		t.Fatalf("requests %d errors %d", st.Requests, st.Errors)
	}
}
