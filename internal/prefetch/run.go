package prefetch

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
)

// Requester sends one capability request; *client.Client is one.
type Requester interface {
	Image(ctx context.Context, fn contract.Function, image string, opts ...client.CallOption) (*client.Reply, error)
}

// Options tune a prefetch run. Zero values take the defaults.
type Options struct {
	// Functions to call for every image (default: all three).
	Functions []contract.Function
	// Platform, if set, resolves indexes for oci_manifest_config.
	Platform string
	// Concurrency bounds the requests in flight (default 16).
	Concurrency int
	// Retries is how many times a retryable failure is retried; negative
	// means none (default 0 here; the CLI's default is 3).
	Retries int
	// Backoff is the first retry's delay before jitter (default 250ms); it
	// doubles on each retry up to MaxBackoff (default 10s).
	Backoff, MaxBackoff time.Duration
	// OnResult, if set, is called once per finished request, never
	// concurrently.
	OnResult func(Result)
	// Check, if set, is asked about each request before it is sent: an
	// error (a 400 *contract.Error, as the fleet would answer) is the
	// request's result, and nothing is sent.
	Check func(image string, fn contract.Function) error
}

// Result is the outcome of one (image, function) request.
type Result struct {
	Reference string
	Function  contract.Function
	// Cache is the reply's Regcap-Cache on success.
	Cache contract.Outcome
	// Err is nil on success, a *contract.Error for an error reply, wraps
	// client.ErrUnreachable when no worker could be reached, or is another
	// error that kept the request from being sent (a bad subject, a payload
	// over the server's limit).
	Err      error
	Attempts int
}

// Failure is one failed request in a Report.
type Failure struct {
	Reference string `json:"reference"`
	Function  string `json:"function"`
	// Code is the fleet's error code; 0 when no worker answered.
	Code     int    `json:"code"`
	Message  string `json:"message"`
	Attempts int    `json:"attempts"`

	// kind is the ByCode key: the code, codeUnreachable or codeError.
	kind string
}

// Report sums up a run.
type Report struct {
	Images    int      `json:"images"`
	Functions []string `json:"functions"`
	// Total is images × functions; OK + Failed + Skipped = Total.
	Total  int `json:"total"`
	OK     int `json:"ok"`
	Failed int `json:"failed"`
	// Skipped requests were not finished because the run was interrupted.
	Skipped int `json:"skipped"`
	// Hits were answered from the cache, Fetched by a fetch made for
	// them, Shared by a fetch already in flight, Stale past their TTL
	// because the registry failed (Regcap-Cache).
	Hits    int `json:"hits"`
	Fetched int `json:"fetched"`
	Shared  int `json:"shared"`
	Stale   int `json:"stale"`
	// ByCode counts failures by error code, "unreachable" when no worker
	// could be reached (no responders, a timeout, no connection), "error"
	// when the request could not be sent at all.
	ByCode      map[string]int `json:"by_code"`
	Retries     int            `json:"retries"`
	Elapsed     time.Duration  `json:"-"`
	Seconds     float64        `json:"elapsed_seconds"`
	Rate        float64        `json:"rate_per_second"`
	Interrupted bool           `json:"interrupted"`
	Failures    []Failure      `json:"failures"`
}

// Unreachable reports whether the fleet could not be reached at all: some
// requests were finished and every one failed because no worker could be
// reached. Other failures (error replies, requests that could not be
// sent) say nothing about the fleet's reachability.
func (r *Report) Unreachable() bool {
	return r.Failed > 0 && r.OK == 0 && r.ByCode[codeUnreachable] == r.Failed
}

const (
	codeUnreachable = "unreachable"
	codeError       = "error"
)

// maxRetryAfter is the longest Retry-After worth waiting for: a registry
// that asks for more (Docker Hub's pull limit resets after hours) will not
// let this run through, so the 429 is reported at once instead.
const maxRetryAfter = time.Minute

// Run calls every function of opts for every image through req and
// reports. Cancelling ctx stops it: requests in flight are abandoned, the
// rest skipped, and the report says so.
func Run(ctx context.Context, req Requester, images []string, opts Options) *Report {
	fns := opts.Functions
	if len(fns) == 0 {
		fns = []contract.Function{contract.ManifestDigest, contract.OCIManifest, contract.OCIManifestConfig}
	}
	conc := opts.Concurrency
	if conc <= 0 {
		conc = 16
	}
	rep := &Report{Images: len(images), Total: len(images) * len(fns), ByCode: map[string]int{}, Failures: []Failure{}}
	for _, fn := range fns {
		rep.Functions = append(rep.Functions, string(fn))
	}
	start := time.Now()

	type job struct {
		image string
		fn    contract.Function
	}
	jobs := make(chan job)
	var (
		mu   sync.Mutex
		done int
		wg   sync.WaitGroup
	)
	for range min(conc, max(rep.Total, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				res := call(ctx, req, j.image, j.fn, opts)
				var ce *contract.Error
				if ctx.Err() != nil && res.Err != nil && !errors.As(res.Err, &ce) {
					// Interrupted, not failed: the fleet never had its
					// say. An error reply that came in as the run was
					// interrupted is counted as what it is.
					continue
				}
				mu.Lock()
				done++
				rep.add(res)
				if opts.OnResult != nil {
					opts.OnResult(res)
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, img := range images {
		for _, fn := range fns {
			select {
			case jobs <- job{img, fn}:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(jobs)
	wg.Wait()

	rep.Skipped = rep.Total - done
	rep.Interrupted = rep.Skipped > 0
	rep.Elapsed = time.Since(start)
	rep.Seconds = rep.Elapsed.Seconds()
	if rep.Seconds > 0 {
		rep.Rate = float64(done) / rep.Seconds
	}
	// Failures in the order of the input, whatever order they finished in.
	imageAt := make(map[string]int, len(images))
	for i, img := range images {
		imageAt[img] = i
	}
	fnAt := make(map[string]int, len(fns))
	for i, fn := range fns {
		fnAt[string(fn)] = i
	}
	sort.SliceStable(rep.Failures, func(i, j int) bool {
		a, b := rep.Failures[i], rep.Failures[j]
		if a.Reference != b.Reference {
			return imageAt[a.Reference] < imageAt[b.Reference]
		}
		return fnAt[a.Function] < fnAt[b.Function]
	})
	return rep
}

func (r *Report) add(res Result) {
	r.Retries += res.Attempts - 1
	if res.Err == nil {
		r.OK++
		switch res.Cache {
		case contract.Hit:
			r.Hits++
		case contract.Shared:
			r.Shared++
		case contract.Stale:
			r.Stale++
		default:
			r.Fetched++
		}
		return
	}
	r.Failed++
	f := Failure{Reference: res.Reference, Function: string(res.Function), Message: res.Err.Error(), Attempts: res.Attempts}
	var ce *contract.Error
	switch {
	case errors.As(res.Err, &ce):
		f.Code, f.Message = ce.Code, ce.Message
		f.kind = strconv.Itoa(ce.Code)
	case errors.Is(res.Err, client.ErrUnreachable):
		f.kind = codeUnreachable
	default:
		f.kind = codeError
	}
	r.ByCode[f.kind]++
	r.Failures = append(r.Failures, f)
}

// call makes one request, retrying what may succeed later: 503 (worker
// busy or stopping), 429 (registry rate limit, after its Retry-After),
// and no responders or timeouts. Other errors are final.
func call(ctx context.Context, req Requester, image string, fn contract.Function, opts Options) Result {
	var copts []client.CallOption
	if opts.Platform != "" && fn == contract.OCIManifestConfig {
		copts = append(copts, client.WithPlatform(opts.Platform))
	}
	backoff, maxBackoff := opts.Backoff, opts.MaxBackoff
	if backoff <= 0 {
		backoff = 250 * time.Millisecond
	}
	if maxBackoff <= 0 {
		maxBackoff = 10 * time.Second
	}
	res := Result{Reference: image, Function: fn}
	if opts.Check != nil {
		if res.Err = opts.Check(image, fn); res.Err != nil {
			return res // Attempts 0: never sent
		}
	}
	for attempt := 0; ; attempt++ {
		res.Attempts = attempt + 1
		r, err := req.Image(ctx, fn, image, copts...)
		if err == nil {
			res.Cache, res.Err = r.Cache, nil
			return res
		}
		res.Err = err
		wait, ok := retryable(err)
		if !ok || wait > maxRetryAfter || attempt >= opts.Retries {
			return res
		}
		if ctx.Err() != nil {
			// A retry was due: interrupted, not failed.
			res.Err = ctx.Err()
			return res
		}
		wait = max(wait, jitter(backoffDelay(attempt, backoff, maxBackoff)))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			// Interrupted before the retry: the earlier reply (a 503, a
			// 429) was not this request's last word, so it is not a
			// failure to report.
			t.Stop()
			res.Err = ctx.Err()
			return res
		}
	}
}

// backoffDelay is the delay before retry number attempt+1: base doubled
// attempt times, at most limit. It doubles step by step and stops at
// limit, so that no shift overflows however many retries are allowed.
func backoffDelay(attempt int, base, limit time.Duration) time.Duration {
	d := min(base, limit)
	for range attempt {
		if d >= limit/2 {
			return limit
		}
		d *= 2
	}
	return d
}

// jitter spreads a delay d > 0 uniformly over [d/2, d) ("equal jitter"),
// so that a fleet that shed load is not hit again by every client at
// once, while every client still waits at least half the backoff.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half)
}

// retryable reports whether err may go away on a later attempt, and the
// least wait the fleet asked for.
func retryable(err error) (time.Duration, bool) {
	var ce *contract.Error
	if errors.As(err, &ce) {
		switch ce.Code {
		case http.StatusServiceUnavailable:
			return 0, true
		case http.StatusTooManyRequests:
			return retryAfter(ce.RetryAfter), true
		}
		return 0, false
	}
	return 0, errors.Is(err, client.ErrUnreachable)
}

// retryAfter is the wait a 429's Retry-After asks for; none when it says
// nothing readable.
func retryAfter(v string) time.Duration {
	d, _ := contract.ParseRetryAfter(v, time.Now())
	return d
}
