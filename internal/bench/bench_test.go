package bench_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testworker"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/bench"
	"github.com/regcap/regcap/internal/testenv"
)

// TestRunWarmAndCold runs the whole benchmark against a real worker, with
// the echo floor, and checks what it reports, never how fast it was.
func TestRunWarmAndCold(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	cli := testenv.Client(t, ns.ClientURL())
	img := reg.PushImage(t, "bench/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := reg.Ref("bench/app", "v1")
	echo := &bench.Echo{Requester: testenv.Connect(t, ns.ClientURL()), Responder: testenv.Connect(t, ns.ClientURL())}

	t.Run("warm", func(t *testing.T) {
		rep, err := bench.Run(context.Background(), cli, echo, bench.Options{
			Function: contract.ManifestDigest, Images: []string{ref},
			Concurrency: []int{1, 4}, Requests: 40, Warmup: 10 * time.Millisecond, Runs: 3,
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := len(`{"digest":"` + img.Digest + `"}`); rep.ReplyBytes != want {
			t.Fatalf("reply bytes %d, want %d", rep.ReplyBytes, want)
		}
		if rep.Mode != "warm" || rep.Runs != 3 || len(rep.Levels) != 2 {
			t.Fatalf("report: %+v", rep)
		}
		for i, l := range rep.Levels {
			if l.Concurrency != []int{1, 4}[i] {
				t.Fatalf("level %d: concurrency %d", i, l.Concurrency)
			}
			// Three runs of 40 requests, every one a hit.
			if l.Regcap.Requests != 120 || l.Regcap.Errors != 0 || l.Regcap.Cache["hit"] != 120 {
				t.Fatalf("c=%d regcap: %+v", l.Concurrency, l.Regcap)
			}
			if l.Echo == nil || l.Echo.Requests != 120 || l.Echo.Errors != 0 || l.Ratio == nil {
				t.Fatalf("c=%d echo: %+v", l.Concurrency, l.Echo)
			}
			if l.Ratio.Throughput <= 0 || l.Ratio.P50 <= 0 {
				t.Fatalf("c=%d ratio: %+v", l.Concurrency, l.Ratio)
			}
		}
		var out strings.Builder
		bench.WriteText(&out, rep)
		for _, want := range []string{"warm cache", "median of 3 runs", "regcap/echo", "hit:120"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("table lacks %q:\n%s", want, out.String())
			}
		}
	})

	t.Run("cold", func(t *testing.T) {
		reg.ResetCounts()
		rep, err := bench.Run(context.Background(), cli, nil, bench.Options{
			Function: contract.ManifestDigest, Images: []string{ref},
			Concurrency: []int{2}, Requests: 20, Fresh: bench.FreshTags([]string{ref}).Tags,
		})
		if err != nil {
			t.Fatal(err)
		}
		l := rep.Levels[0]
		if rep.Mode != "cold" || l.Regcap.Requests != 20 || l.Regcap.Cache[contract.Miss] != 20 || l.Regcap.Cache[contract.Hit] != 0 {
			t.Fatalf("cold run: mode %s, %+v", rep.Mode, l.Regcap)
		}
		if l.Echo != nil {
			t.Fatal("echo measured although none was given")
		}
		// The raw HEAD floor ran on tags of its own, without errors.
		if l.Head == nil || l.Head.Requests != 20 || l.Head.Errors != 0 || l.HeadRatio == nil || l.HeadRatio.Throughput <= 0 {
			t.Fatalf("cold run: HEAD floor %+v, ratio %+v", l.Head, l.HeadRatio)
		}
		// Every request reached the registry: one HEAD per fresh tag, for
		// regcap and for the floor, plus the probe's.
		if n := reg.Count("HEAD", "manifest"); n < 40 {
			t.Fatalf("%d manifest HEADs for 20 cold requests and 20 floor HEADs", n)
		}
	})

	t.Run("cold needs a request count", func(t *testing.T) {
		_, err := bench.Run(context.Background(), cli, nil, bench.Options{
			Function: contract.ManifestDigest, Images: []string{ref}, Duration: time.Second, Fresh: bench.FreshTags([]string{ref}).Tags,
		})
		if err == nil {
			t.Fatal("want an error")
		}
	})
}

// counting is a Requester that counts its calls and answers at once.
type counting struct{ calls atomic.Int64 }

func (c *counting) Image(context.Context, contract.Function, string, ...client.CallOption) (*client.Reply, error) {
	c.calls.Add(1)
	return &client.Reply{Body: []byte("{}"), Cache: "hit"}, nil
}

// TestRunRejectsEndlessLoads: a negative request count, no duration, or a
// concurrency below 1 is refused before any request is sent.
func TestRunRejectsEndlessLoads(t *testing.T) {
	cases := map[string]bench.Options{
		"negative requests": {Requests: -1, Duration: time.Second},
		"no duration":       {Duration: 0},
		"negative duration": {Duration: -time.Second},
		"zero concurrency":  {Requests: 5, Concurrency: []int{1, 0}},
	}
	for name, opts := range cases {
		t.Run(name, func(t *testing.T) {
			var req counting
			opts.Function, opts.Images = contract.ManifestDigest, []string{"busybox"}
			if _, err := bench.Run(context.Background(), &req, nil, opts); err == nil {
				t.Fatal("want an error")
			}
			if n := req.calls.Load(); n != 0 {
				t.Fatalf("%d requests sent", n)
			}
		})
	}
}

// TestMeasureNegativeRequests: a negative request count measures for the
// duration instead of never stopping.
func TestMeasureNegativeRequests(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const guard = 10000 // ends the test if the measurement never would
	var calls atomic.Int64
	call := func(context.Context, int) (contract.Outcome, error) {
		if calls.Add(1) == guard {
			cancel()
		}
		time.Sleep(50 * time.Microsecond)
		return "", nil
	}
	bench.Measure(ctx, call, bench.Load{Concurrency: 1, Requests: -1, Duration: time.Millisecond})
	if calls.Load() >= guard {
		t.Fatalf("Requests -1 did not stop after the duration: %d calls", calls.Load())
	}
}
