package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
)

// Requester sends one capability request; *client.Client is one.
type Requester interface {
	Image(ctx context.Context, fn contract.Function, image string, opts ...client.CallOption) (*client.Reply, error)
}

// Echo is the floor to compare with: a responder on its own connection,
// as a worker has, and requests from another, as the client's.
type Echo struct {
	Requester, Responder *nats.Conn
	// Timeout bounds one echo request, as the client's timeout does: give
	// both the same (default 30s, as client.New).
	Timeout time.Duration
}

// defaultTimeout bounds an echo request when Echo.Timeout is not set: the
// default of client.New, that of the regcap requests it is compared with.
const defaultTimeout = 30 * time.Second

func (e *Echo) timeout() time.Duration {
	if e.Timeout > 0 {
		return e.Timeout
	}
	return defaultTimeout
}

// Options describe a benchmark.
type Options struct {
	Function contract.Function
	Images   []string
	// Platform, if set, is sent with oci_manifest_config requests.
	Platform    string
	Concurrency []int
	// Duration or Requests per measurement, after Warmup: Requests if it
	// is positive, else Duration, which must then be positive.
	Duration time.Duration
	Requests int
	Warmup   time.Duration
	// Runs is how many times each level is measured (alternating regcap and
	// echo); the figures reported are medians (default 1).
	Runs int
	// Fresh, when set, makes the run cold: it returns n references never
	// asked for before (new tags of Images), so every request is a cache
	// miss and a registry fetch. Requests must be set; the echo is then
	// measured for Duration.
	Fresh func(ctx context.Context, n int) ([]string, error)
	// OnStage, if set, is told when each measurement starts, and once
	// with Done when the run ends: for progress on a terminal.
	OnStage func(Stage)
}

// Stage is the measurement starting: Target ("regcap", "echo", "raw
// HEAD" or "NATS relay") at Concurrency, level Level of Levels and run Run of Runs
// (counted from 1).
type Stage struct {
	Target                   string
	Concurrency              int
	Level, Levels, Run, Runs int
	Done                     bool
}

func (o *Options) stage(s Stage) {
	if o.OnStage != nil {
		o.OnStage(s)
	}
}

// Level is the result at one concurrency.
type Level struct {
	Concurrency int    `json:"concurrency"`
	Regcap      Stats  `json:"regcap"`
	Echo        *Stats `json:"echo,omitempty"`
	Ratio       *Ratio `json:"ratio,omitempty"`
	// Head is the cold path's floor (cold manifest_digest runs only): a
	// plain HTTP client sending a HEAD for a new tag per request to the
	// same registry, at the same concurrency, in the same run; HeadRatio
	// compares regcap with it.
	Head      *Stats `json:"head_floor,omitempty"`
	HeadRatio *Ratio `json:"head_ratio,omitempty"`
	// Relay is the cold path's floor over NATS (cold manifest_digest runs
	// with the echo's connections): a responder that answers each request
	// with one HEAD and nothing else; RelayRatio compares regcap with it.
	Relay      *Stats `json:"relay_floor,omitempty"`
	RelayRatio *Ratio `json:"relay_ratio,omitempty"`
}

// Report is a whole benchmark.
type Report struct {
	Function   string  `json:"function"`
	Images     int     `json:"images"`
	Mode       string  `json:"mode"` // warm or cold
	ReplyBytes int     `json:"reply_bytes"`
	Runs       int     `json:"runs"`
	Seconds    float64 `json:"seconds_per_run,omitempty"`
	Requests   int     `json:"requests_per_run,omitempty"`
	Warmup     float64 `json:"warmup_seconds,omitempty"`
	Levels     []Level `json:"levels"`
	// Interrupted is set when ctx ended the run early.
	Interrupted bool `json:"interrupted,omitempty"`
}

// ErrProbe wraps a failed first request: the benchmark cannot start.
var ErrProbe = errors.New("probe request failed")

// Run measures regcap at every concurrency of opts and, with echo, the
// echo floor right after each regcap measurement. Before measuring it
// requests every image once: to learn the reply size the echo must send,
// and, in warm mode, to fill the cache.
func Run(ctx context.Context, req Requester, echo *Echo, opts Options) (*Report, error) {
	if len(opts.Images) == 0 {
		return nil, errors.New("no images to request")
	}
	if opts.Fresh != nil && opts.Requests <= 0 {
		return nil, errors.New("cold mode needs a request count: every request uses a new tag")
	}
	if err := opts.Check(); err != nil {
		return nil, err
	}
	runs := max(opts.Runs, 1)
	var copts []client.CallOption
	if opts.Platform != "" && opts.Function == contract.OCIManifestConfig {
		copts = append(copts, client.WithPlatform(opts.Platform))
	}
	total := 0
	for _, img := range opts.Images {
		r, err := req.Image(ctx, opts.Function, img, copts...)
		if err != nil {
			return nil, fmt.Errorf("%w: %s %s: %w", ErrProbe, opts.Function, img, err)
		}
		total += len(r.Body)
	}
	rep := &Report{
		Function: string(opts.Function), Images: len(opts.Images), Mode: "warm",
		ReplyBytes: total / len(opts.Images), Runs: runs,
		Requests: opts.Requests, Warmup: opts.Warmup.Seconds(),
	}
	if opts.Requests == 0 {
		rep.Seconds = opts.Duration.Seconds()
	}
	if opts.Fresh != nil {
		rep.Mode, rep.Warmup = "cold", 0
	}

	// A cold digest run compares with the relay, which does what a miss
	// must do; the plain echo says nothing about a miss.
	coldDigest := opts.Fresh != nil && opts.Function == contract.ManifestDigest
	var echoCall Call
	var rl *relay
	switch {
	case echo != nil && coldDigest:
		r, err := startRelay(echo, max(slices.Max(append([]int{1}, opts.Concurrency...)), 1))
		if err != nil {
			return nil, err
		}
		defer r.stop()
		rl = r
	case echo != nil:
		c, stop, err := startEcho(echo, rep.ReplyBytes)
		if err != nil {
			return nil, err
		}
		defer stop()
		echoCall = c
	}

	levels := opts.Concurrency
	if len(levels) == 0 {
		levels = []int{1}
	}
	defer opts.stage(Stage{Done: true})
	for li, c := range levels {
		load := Load{Concurrency: c, Duration: opts.Duration, Requests: opts.Requests, Warmup: opts.Warmup}
		var regs, echos, heads, relays []Stats
		for run := range runs {
			at := Stage{Concurrency: c, Level: li + 1, Levels: len(levels), Run: run + 1, Runs: runs}
			if ctx.Err() != nil {
				break
			}
			call, err := regcapCall(ctx, req, opts, copts)
			if err != nil {
				return nil, err
			}
			regLoad, echoLoad := load, load
			if opts.Fresh != nil {
				// A warm-up would use up fresh tags and fill the cache. The
				// echo has no cache to miss: it runs for Duration, as in warm
				// mode, since a few hundred echoes are over before the
				// figures settle.
				regLoad.Warmup = 0
				echoLoad = Load{Concurrency: c, Duration: max(opts.Duration, time.Second), Warmup: time.Second}
			}
			at.Target = "regcap"
			opts.stage(at)
			regs = append(regs, Measure(ctx, call, regLoad))
			if echoCall != nil && ctx.Err() == nil {
				at.Target = "echo"
				opts.stage(at)
				echos = append(echos, Measure(ctx, echoCall, echoLoad))
			}
			if coldDigest && ctx.Err() == nil {
				// The floor gets tags of its own: the registry has not
				// been asked for them either.
				refs, err := opts.Fresh(ctx, opts.Requests)
				if err != nil {
					return nil, fmt.Errorf("making fresh tags for the HEAD floor: %w", err)
				}
				head, err := HeadFloor(refs, c)
				if err != nil {
					return nil, err
				}
				at.Target = "raw HEAD"
				opts.stage(at)
				heads = append(heads, Measure(ctx, head, regLoad))
			}
			if rl != nil && ctx.Err() == nil {
				refs, err := opts.Fresh(ctx, opts.Requests)
				if err != nil {
					return nil, fmt.Errorf("making fresh tags for the relay floor: %w", err)
				}
				at.Target = "NATS relay"
				opts.stage(at)
				relays = append(relays, Measure(ctx, rl.call(refs), regLoad))
			}
		}
		if len(regs) == 0 {
			break
		}
		lv := Level{Concurrency: c, Regcap: MedianStats(regs)}
		if len(echos) > 0 {
			e := MedianStats(echos)
			r := Compare(lv.Regcap, e)
			lv.Echo, lv.Ratio = &e, &r
		}
		if len(heads) > 0 {
			h := MedianStats(heads)
			r := Compare(lv.Regcap, h)
			lv.Head, lv.HeadRatio = &h, &r
		}
		if len(relays) > 0 {
			h := MedianStats(relays)
			r := Compare(lv.Regcap, h)
			lv.Relay, lv.RelayRatio = &h, &r
		}
		rep.Levels = append(rep.Levels, lv)
	}
	rep.Interrupted = ctx.Err() != nil
	return rep, nil
}

// Check rejects a load that would never end or never start; Run calls
// it, and a CLI may call it first to report bad flags before connecting.
// Its messages name the flags of requester bench.
func (o *Options) Check() error {
	switch {
	case o.Requests < 0:
		return fmt.Errorf("--requests %d: want a positive count, or 0 to measure for --duration", o.Requests)
	case o.Requests == 0 && o.Duration <= 0:
		return fmt.Errorf("--duration %s: want a positive duration such as 5s (or a --requests count)", o.Duration)
	}
	for _, c := range o.Concurrency {
		if c < 1 {
			return fmt.Errorf("--concurrency %d: want at least 1", c)
		}
	}
	return nil
}

// regcapCall returns the Call for one measurement: round-robin over the
// images when warm, a fresh reference per request when cold.
func regcapCall(ctx context.Context, req Requester, opts Options, copts []client.CallOption) (Call, error) {
	refs := opts.Images
	if opts.Fresh != nil {
		var err error
		if refs, err = opts.Fresh(ctx, opts.Requests); err != nil {
			return nil, fmt.Errorf("making fresh tags for the cold run: %w", err)
		}
	}
	return func(ctx context.Context, seq int) (contract.Outcome, error) {
		r, err := req.Image(ctx, opts.Function, refs[seq%len(refs)], copts...)
		if err != nil {
			return "", err
		}
		return r.Cache, nil
	}, nil
}

// startEcho subscribes a responder that answers every request with size
// bytes, and returns the Call that requests it.
func startEcho(e *Echo, size int) (Call, func(), error) {
	subject := nats.NewInbox() + ".echo"
	body := make([]byte, size)
	for i := range body {
		body[i] = 'x'
	}
	sub, err := e.Responder.Subscribe(subject, func(m *nats.Msg) { _ = m.Respond(body) })
	if err != nil {
		return nil, nil, fmt.Errorf("starting the echo responder: %w", err)
	}
	// Make sure the server knows the subscription before the first request.
	if err := e.Responder.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, nil, fmt.Errorf("starting the echo responder: %w", err)
	}
	payload, _ := json.Marshal("echo")
	timeout := e.timeout()
	call := func(ctx context.Context, _ int) (contract.Outcome, error) {
		// Like client.Call: a deadline of its own when ctx has none.
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		_, err := e.Requester.RequestWithContext(ctx, subject, payload)
		return "", err
	}
	return call, func() { _ = sub.Unsubscribe() }, nil
}

// MedianStats summarises repeated measurements of one load: every figure
// is the median of the runs' figures; request and error counts are summed.
func MedianStats(runs []Stats) Stats {
	if len(runs) == 1 {
		return runs[0]
	}
	pick := func(f func(Stats) float64) float64 {
		xs := make([]float64, len(runs))
		for i, r := range runs {
			xs[i] = f(r)
		}
		return Median(xs)
	}
	dur := func(f func(Stats) time.Duration) time.Duration {
		return time.Duration(pick(func(s Stats) float64 { return float64(f(s)) }))
	}
	var out Stats
	for _, r := range runs {
		out.Requests += r.Requests
		out.Errors += r.Errors
		if out.FirstError == "" {
			out.FirstError = r.FirstError
		}
		for k, v := range r.Cache {
			if out.Cache == nil {
				out.Cache = map[contract.Outcome]int{}
			}
			out.Cache[k] += v
		}
	}
	out.Throughput = pick(func(s Stats) float64 { return s.Throughput })
	for _, r := range runs {
		out.RunThroughputs = append(out.RunThroughputs, r.Throughput)
	}
	out.Elapsed = dur(func(s Stats) time.Duration { return s.Elapsed })
	out.Seconds = out.Elapsed.Seconds()
	out.P50 = dur(func(s Stats) time.Duration { return s.P50 })
	out.P90 = dur(func(s Stats) time.Duration { return s.P90 })
	out.P99 = dur(func(s Stats) time.Duration { return s.P99 })
	out.Max = dur(func(s Stats) time.Duration { return s.Max })
	out.P50us, out.P90us, out.P99us, out.MaxUs = us(out.P50), us(out.P90), us(out.P99), us(out.Max)
	return out
}
