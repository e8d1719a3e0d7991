package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regcap/regcap/contract"
)

// Load is how one measurement drives a target.
type Load struct {
	// Concurrency is the number of callers, each with one request in
	// flight at a time (closed loop).
	Concurrency int
	// Duration of the measurement, or Requests in total if positive
	// (Requests wins; zero or negative means Duration).
	Duration time.Duration
	Requests int
	// Warmup runs the same load this long first, unmeasured: connections,
	// buffers and caches settle.
	Warmup time.Duration
}

// Call sends request number seq (0, 1, … across all callers) and returns
// the reply's Regcap-Cache ("" when there is none).
type Call func(ctx context.Context, seq int) (cache contract.Outcome, err error)

// Measure runs call under load and summarises what it saw. Cancelling ctx
// ends it early, with the figures so far.
func Measure(ctx context.Context, call Call, l Load) Stats {
	c := max(l.Concurrency, 1)
	if l.Warmup > 0 {
		wctx, cancel := context.WithTimeout(ctx, l.Warmup)
		drive(wctx, call, c, 0, false)
		cancel()
	}
	mctx := ctx
	n := max(l.Requests, 0)
	if n == 0 {
		var cancel context.CancelFunc
		mctx, cancel = context.WithTimeout(ctx, max(l.Duration, time.Millisecond))
		defer cancel()
	}
	start := time.Now()
	per := drive(mctx, call, c, n, true)
	elapsed := time.Since(start)

	var lat []time.Duration
	errs := 0
	var first string
	cache := map[contract.Outcome]int{}
	for _, p := range per {
		lat = append(lat, p.lat...)
		errs += p.errs
		if first == "" {
			first = p.first
		}
		for k, v := range p.cache {
			cache[k] += v
		}
	}
	s := Summarise(lat, errs, elapsed)
	s.FirstError = first
	if len(cache) > 0 {
		s.Cache = cache
	}
	return s
}

type callerStats struct {
	lat   []time.Duration
	errs  int
	first string
	cache map[contract.Outcome]int
}

// drive runs c callers until ctx ends or n requests (if n > 0) were sent.
// Unless keep, nothing is recorded (warm-up).
func drive(ctx context.Context, call Call, c, n int, keep bool) []callerStats {
	var (
		seq atomic.Int64
		wg  sync.WaitGroup
	)
	per := make([]callerStats, c)
	for i := range c {
		wg.Add(1)
		go func(st *callerStats) {
			defer wg.Done()
			st.cache = map[contract.Outcome]int{}
			if n > 0 {
				st.lat = make([]time.Duration, 0, n/c+1)
			}
			for ctx.Err() == nil {
				s := int(seq.Add(1) - 1)
				if n > 0 && s >= n {
					return
				}
				t0 := time.Now()
				cache, err := call(ctx, s)
				d := time.Since(t0)
				if !keep {
					continue
				}
				if err != nil {
					if ctx.Err() != nil {
						// Cut off by the end of the measurement, not failed.
						return
					}
					st.errs++
					if st.first == "" {
						st.first = err.Error()
					}
					continue
				}
				st.lat = append(st.lat, d)
				if cache != "" {
					st.cache[cache]++
				}
			}
		}(&per[i])
	}
	wg.Wait()
	return per
}
