package prefetch_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testworker"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/prefetch"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

var allFunctions = []contract.Function{contract.ManifestDigest, contract.OCIManifest, contract.OCIManifestConfig}

// TestPrefetchWarmsCache prefetches 300 images through a real worker and
// then asks for every one of them again: all hits, no registry traffic.
func TestPrefetchWarmsCache(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	cli := testenv.Client(t, ns.ClientURL())

	var images []string
	for i := range 300 {
		repo := fmt.Sprintf("team%d/app%d", i%7, i)
		reg.PushImage(t, repo, "v1", testenv.OCIManifest, "linux/amd64")
		images = append(images, reg.Ref(repo, "v1"))
	}
	reg.ResetCounts()

	var results int
	rep := prefetch.Run(context.Background(), cli, images, prefetch.Options{
		Concurrency: 16, Retries: 3, OnResult: func(prefetch.Result) { results++ },
	})
	if rep.Total != 900 || rep.OK != 900 || rep.Failed != 0 || rep.Skipped != 0 || rep.Interrupted {
		t.Fatalf("report: total %d ok %d failed %d skipped %d interrupted %v; failures %+v",
			rep.Total, rep.OK, rep.Failed, rep.Skipped, rep.Interrupted, rep.Failures)
	}
	if results != 900 {
		t.Fatalf("OnResult called %d times, want 900", results)
	}
	if rep.Hits+rep.Fetched+rep.Shared != 900 || rep.Fetched == 0 {
		t.Fatalf("cache outcomes: hit %d fetched %d shared %d", rep.Hits, rep.Fetched, rep.Shared)
	}
	if reg.Count("HEAD", "manifest") == 0 {
		t.Fatal("the prefetch never reached the registry")
	}

	reg.ResetCounts()
	for _, img := range images {
		for _, fn := range allFunctions {
			r, err := cli.Image(context.Background(), fn, img)
			if err != nil {
				t.Fatalf("%s %s after prefetch: %v", fn, img, err)
			}
			if r.Cache != contract.Hit {
				t.Fatalf("%s %s after prefetch: Regcap-Cache %q, want hit", fn, img, r.Cache)
			}
		}
	}
	if c := reg.Counts(); len(c) != 0 {
		t.Fatalf("requests after prefetch reached the registry: %v", c)
	}
}

// TestPrefetchFailuresByCode mixes good images, missing ones and bad
// references: each failure is reported with its code and nothing is
// retried.
func TestPrefetchFailuresByCode(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	cli := testenv.Client(t, ns.ClientURL())

	reg.PushImage(t, "good/one", "v1", testenv.OCIManifest, "linux/amd64")
	reg.PushImage(t, "good/two", "v1", testenv.DockerManifest, "linux/amd64")
	images := []string{
		reg.Ref("good/one", "v1"),
		reg.Ref("good/one", "missing-tag"),
		reg.Ref("good/two", "v1"),
		reg.Ref("no/such-repo", "v1"),
		"UPPER/Case:bad tag",
		reg.Host + "/x@sha256:nothex",
	}
	rep := prefetch.Run(context.Background(), cli, images, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest, contract.OCIManifestConfig}, Retries: 3, Backoff: time.Millisecond,
	})
	if rep.Total != 12 || rep.OK != 4 || rep.Failed != 8 {
		t.Fatalf("total %d ok %d failed %d; by code %v", rep.Total, rep.OK, rep.Failed, rep.ByCode)
	}
	if want := map[string]int{"400": 4, "404": 4}; fmt.Sprint(rep.ByCode) != fmt.Sprint(want) {
		t.Fatalf("by code %v, want %v", rep.ByCode, want)
	}
	if rep.Retries != 0 {
		t.Fatalf("4xx were retried %d times", rep.Retries)
	}
	if len(rep.Failures) != 8 {
		t.Fatalf("want 8 failures listed, got %d", len(rep.Failures))
	}
	// Listed in input order: image by image, function by function.
	wantOrder := []string{images[1], images[1], images[3], images[3], images[4], images[4], images[5], images[5]}
	for i, f := range rep.Failures {
		if f.Reference != wantOrder[i] || f.Function != []string{"v1/manifest_digest", "v1/oci_manifest_config"}[i%2] {
			t.Errorf("failure %d is %s %s, want %s in input order", i, f.Function, f.Reference, wantOrder[i])
		}
	}
	for _, f := range rep.Failures {
		if f.Reference == "" || f.Function == "" || f.Message == "" || f.Attempts != 1 {
			t.Errorf("incomplete failure: %+v", f)
		}
		if f.Reference == images[1] && f.Code != 404 {
			t.Errorf("missing tag: code %d, want 404", f.Code)
		}
		if f.Reference == images[4] && f.Code != 400 {
			t.Errorf("bad reference: code %d, want 400", f.Code)
		}
	}
	if rep.Unreachable() {
		t.Fatal("Unreachable() = true although the worker answered")
	}
}

// responder answers manifest_digest on a NATS server like a worker would,
// with a scripted sequence of answers per image: a code, 200, or no answer
// at all for a negative code.
type responder struct {
	mu    sync.Mutex
	calls map[string]int
}

func startResponder(t *testing.T, url string, script func(image string, call int) (code int, retryAfter string)) *responder {
	t.Helper()
	r := &responder{calls: map[string]int{}}
	nc := testenv.Connect(t, url)
	_, err := nc.Subscribe(contract.ManifestDigest.Subject("kubewarden"), func(m *nats.Msg) {
		image, _ := strconv.Unquote(string(m.Data))
		r.mu.Lock()
		r.calls[image]++
		n := r.calls[image]
		r.mu.Unlock()
		reply := nats.NewMsg(m.Reply)
		code, retryAfter := script(image, n)
		if code < 0 {
			return // no answer: the requester times out
		}
		if code == 200 {
			reply.Header.Set(contract.HeaderCache, string(contract.Miss))
			reply.Data = []byte(`{"digest":"sha256:0000"}`)
		} else {
			reply.Header.Set(contract.HeaderErrorCode, strconv.Itoa(code))
			reply.Header.Set(contract.HeaderError, fmt.Sprintf("%s: scripted %d", image, code))
			if retryAfter != "" {
				reply.Header.Set(contract.HeaderRetryAfter, retryAfter)
			}
		}
		_ = m.RespondMsg(reply)
	})
	testenv.Must(t, err, "subscribing")
	testenv.Must(t, nc.Flush(), "flush")
	return r
}

func (r *responder) count(image string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[image]
}

func TestPrefetchRetries(t *testing.T) {
	ns := testenv.StartNATS(t)
	startResponder(t, ns.ClientURL(), func(image string, call int) (int, string) {
		switch image {
		case "busy-once":
			if call == 1 {
				return 503, ""
			}
		case "rate-limited-once":
			if call == 1 {
				return 429, "0"
			}
		case "rate-limited-for-hours":
			return 429, "21600"
		case "always-busy":
			return 503, ""
		case "missing":
			return 404, ""
		case "forbidden":
			return 403, ""
		}
		return 200, ""
	})
	cli := testenv.Client(t, ns.ClientURL(), client.WithTimeout(5*time.Second))

	cases := []struct {
		image        string
		retries      int
		wantCode     int // 0: success
		wantAttempts int
	}{
		{"ok", 3, 0, 1},
		{"busy-once", 3, 0, 2},
		{"rate-limited-once", 3, 0, 2},
		{"rate-limited-for-hours", 3, 429, 1},
		{"always-busy", 3, 503, 4},
		{"always-busy", 0, 503, 1},
		{"missing", 3, 404, 1},
		{"forbidden", 3, 403, 1},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/retries=%d", tc.image, tc.retries), func(t *testing.T) {
			var got prefetch.Result
			rep := prefetch.Run(context.Background(), cli, []string{tc.image}, prefetch.Options{
				Functions: []contract.Function{contract.ManifestDigest}, Retries: tc.retries,
				Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
				OnResult: func(r prefetch.Result) { got = r },
			})
			if got.Attempts != tc.wantAttempts {
				t.Errorf("attempts %d, want %d", got.Attempts, tc.wantAttempts)
			}
			if rep.Retries != tc.wantAttempts-1 {
				t.Errorf("report retries %d, want %d", rep.Retries, tc.wantAttempts-1)
			}
			if tc.wantCode == 0 {
				if got.Err != nil || rep.OK != 1 || rep.Fetched != 1 {
					t.Fatalf("want success, got %v (ok %d)", got.Err, rep.OK)
				}
				return
			}
			var ce *contract.Error
			if !errors.As(got.Err, &ce) || ce.Code != tc.wantCode {
				t.Fatalf("want error %d, got %v", tc.wantCode, got.Err)
			}
			if rep.ByCode[strconv.Itoa(tc.wantCode)] != 1 || rep.Failures[0].Code != tc.wantCode {
				t.Fatalf("report: by code %v, failures %+v", rep.ByCode, rep.Failures)
			}
		})
	}
}

// TestPrefetchUnreachable: no worker at all is retried, then reported as
// unreachable, and the report says no worker was reached.
func TestPrefetchUnreachable(t *testing.T) {
	ns := testenv.StartNATS(t)
	cli := testenv.Client(t, ns.ClientURL(), client.WithTimeout(5*time.Second))
	rep := prefetch.Run(context.Background(), cli, []string{"a", "b"}, prefetch.Options{
		Retries: 2, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond,
	})
	if rep.Failed != 6 || rep.ByCode["unreachable"] != 6 || rep.Retries != 12 {
		t.Fatalf("failed %d, by code %v, retries %d", rep.Failed, rep.ByCode, rep.Retries)
	}
	if !rep.Unreachable() {
		t.Fatal("Unreachable() = false with no worker")
	}
	for _, f := range rep.Failures {
		if f.Code != 0 || f.Attempts != 3 {
			t.Fatalf("failure %+v: want code 0 after 3 attempts", f)
		}
	}
}

// blocking answers some images at once and holds the rest until ctx ends,
// as a fleet stuck on a slow registry would.
type blocking struct{ fast map[string]bool }

func (b blocking) Image(ctx context.Context, fn contract.Function, image string, _ ...client.CallOption) (*client.Reply, error) {
	if b.fast[image] {
		return &client.Reply{Body: []byte("{}"), Cache: contract.Hit}, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestPrefetchInterrupted cancels a run: it returns promptly with what was
// done, and what was not is skipped, not failed.
func TestPrefetchInterrupted(t *testing.T) {
	images := []string{"f1", "f2", "slow1", "slow2", "f3", "slow3", "f4", "f5"}
	req := blocking{fast: map[string]bool{"f1": true, "f2": true}}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	done := 0
	rep := make(chan *prefetch.Report)
	go func() {
		rep <- prefetch.Run(ctx, req, images, prefetch.Options{
			Functions: []contract.Function{contract.ManifestDigest}, Concurrency: 2,
			OnResult: func(prefetch.Result) { mu.Lock(); done++; mu.Unlock() },
		})
	}()
	testenv.Eventually(t, "the fast images", func() bool { mu.Lock(); defer mu.Unlock(); return done == 2 })
	cancel()
	r := <-rep
	if !r.Interrupted || r.OK != 2 || r.Failed != 0 || r.Skipped != 6 || r.Total != 8 {
		t.Fatalf("interrupted %v ok %d failed %d skipped %d total %d", r.Interrupted, r.OK, r.Failed, r.Skipped, r.Total)
	}
}

// TestPrefetchRetriesTimeout: a request that got no reply in time is
// retried. The responder ignores the first request for the image, so the
// first attempt can only end by the client's timeout.
func TestPrefetchRetriesTimeout(t *testing.T) {
	ns := testenv.StartNATS(t)
	r := startResponder(t, ns.ClientURL(), func(image string, call int) (int, string) {
		if call == 1 {
			return -1, ""
		}
		return 200, ""
	})
	cli := testenv.Client(t, ns.ClientURL(), client.WithTimeout(time.Second))
	var got prefetch.Result
	rep := prefetch.Run(context.Background(), cli, []string{"silent-once"}, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest}, Retries: 3,
		Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		OnResult: func(res prefetch.Result) { got = res },
	})
	if got.Err != nil || rep.OK != 1 {
		t.Fatalf("want success after a retry, got %v (ok %d, by code %v)", got.Err, rep.OK, rep.ByCode)
	}
	// Normally 2; a loaded machine may time out once more, but every
	// attempt is one request the responder saw.
	if got.Attempts < 2 || got.Attempts != r.count("silent-once") || rep.Retries != got.Attempts-1 {
		t.Fatalf("attempts %d, responder saw %d requests, report retries %d: want at least 2 attempts, one request each",
			got.Attempts, r.count("silent-once"), rep.Retries)
	}
}

// recorder passes requests to a Requester and records each attempt's
// error; after the first 503 it calls on503 before returning it.
type recorder struct {
	req   prefetch.Requester
	on503 func()

	mu   sync.Mutex
	errs []error
}

func (r *recorder) Image(ctx context.Context, fn contract.Function, image string, opts ...client.CallOption) (*client.Reply, error) {
	rep, err := r.req.Image(ctx, fn, image, opts...)
	r.mu.Lock()
	r.errs = append(r.errs, err)
	first := len(r.errs) == 1
	r.mu.Unlock()
	var ce *contract.Error
	if first && errors.As(err, &ce) && ce.Code == 503 && r.on503 != nil {
		r.on503()
	}
	return rep, err
}

// TestPrefetchRetriesWorker503: a real worker with room for one pending
// request, busy with a fetch held at the registry, answers 503 to the
// prefetch; once the held fetch is done, the retry succeeds.
func TestPrefetchRetriesWorker503(t *testing.T) {
	ns := testenv.StartNATS(t)
	w := testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), Config: worker.Config{MaxPending: 1}})
	// Started after the worker, so that its cleanup (which releases the
	// gate) runs before the worker's shutdown.
	reg := testenv.StartRegistry(t)
	cli := testenv.Client(t, ns.ClientURL())
	reg.PushImage(t, "held/app", "v1", testenv.OCIManifest, "linux/amd64")
	reg.PushImage(t, "wanted/app", "v1", testenv.OCIManifest, "linux/amd64")
	gate := reg.Hold("/held/app/")
	t.Cleanup(gate.Release)

	held := make(chan error, 1)
	go func() {
		_, err := cli.Image(context.Background(), contract.ManifestDigest, reg.Ref("held/app", "v1"))
		held <- err
	}()
	<-gate.Arrived()
	testenv.Eventually(t, "the held request pending", func() bool { return w.Pending() == 1 })

	heldErr := make(chan error, 1)
	rec := &recorder{req: cli, on503: func() {
		// The worker said it is full: let its fetch finish, and wait
		// until it has room again before the retry.
		gate.Release()
		heldErr <- <-held
		for deadline := time.Now().Add(20 * time.Second); w.Pending() != 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}}
	var got prefetch.Result
	rep := prefetch.Run(context.Background(), rec, []string{reg.Ref("wanted/app", "v1")}, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest}, Retries: 3,
		Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		OnResult: func(res prefetch.Result) { got = res },
	})
	rec.mu.Lock()
	errs := rec.errs
	rec.mu.Unlock()
	var ce *contract.Error
	if len(errs) == 0 || !errors.As(errs[0], &ce) || ce.Code != 503 || !strings.Contains(ce.Message, "queue limit") {
		t.Fatalf("first attempt: %v, want the worker's 503 (queue limit)", errs)
	}
	if got.Err != nil || got.Attempts != 2 || len(errs) != 2 || rep.OK != 1 || rep.Retries != 1 || rep.Fetched != 1 {
		t.Fatalf("result %v after %d attempts (%v); report ok %d retries %d fetched %d", got.Err, got.Attempts, errs, rep.OK, rep.Retries, rep.Fetched)
	}
	if err := <-heldErr; err != nil {
		t.Fatalf("the held request: %v", err)
	}
}

// always503 is a fleet that is always busy.
type always503 struct{}

func (always503) Image(context.Context, contract.Function, string, ...client.CallOption) (*client.Reply, error) {
	return nil, &contract.Error{Code: 503, Message: "busy"}
}

// TestPrefetchManyRetries: many retries do not overflow the backoff (a
// shift went negative after a few dozen doublings, and the jitter
// panicked on it).
func TestPrefetchManyRetries(t *testing.T) {
	var got prefetch.Result
	rep := prefetch.Run(context.Background(), always503{}, []string{"busy"}, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest}, Retries: 100,
		Backoff: time.Nanosecond, MaxBackoff: time.Microsecond,
		OnResult: func(res prefetch.Result) { got = res },
	})
	if got.Attempts != 101 || rep.Failed != 1 || rep.ByCode["503"] != 1 {
		t.Fatalf("attempts %d, failed %d, by code %v", got.Attempts, rep.Failed, rep.ByCode)
	}
}

// TestPrefetchErrorNotUnreachable: a request that could not be sent (here,
// a payload over the server's limit) is a failure of its own, not "no
// worker answered", and it is not retried.
func TestPrefetchErrorNotUnreachable(t *testing.T) {
	ns := testenv.StartNATS(t, testenv.MaxPayload(1<<20)) // nats-server's default
	cli := testenv.Client(t, ns.ClientURL(), client.WithTimeout(5*time.Second))
	huge := strings.Repeat("a", 2<<20) // over NATS's 1 MiB max_payload
	rep := prefetch.Run(context.Background(), cli, []string{huge}, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest}, Retries: 3, Backoff: time.Millisecond,
	})
	if rep.Failed != 1 || rep.ByCode["error"] != 1 || rep.ByCode["unreachable"] != 0 || rep.Retries != 0 {
		t.Fatalf("failed %d, by code %v, retries %d", rep.Failed, rep.ByCode, rep.Retries)
	}
	if f := rep.Failures[0]; f.Code != 0 || !strings.Contains(f.Message, "maximum payload") {
		t.Fatalf("failure %+v: want code 0 and the error's message", f)
	}
	if rep.Unreachable() {
		t.Fatal("Unreachable() = true for a request that could not be sent")
	}
	var out strings.Builder
	prefetch.WriteText(&out, rep, 10)
	if !strings.Contains(out.String(), "failed   1 (error: 1)") || !strings.Contains(out.String(), "  error manifest_digest ") {
		t.Fatalf("text summary:\n%s", out.String())
	}

	// Together with requests that found no worker: still not "unreachable".
	rep = prefetch.Run(context.Background(), cli, []string{"busybox", huge}, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest},
	})
	if rep.ByCode["error"] != 1 || rep.ByCode["unreachable"] != 1 || rep.Unreachable() {
		t.Fatalf("by code %v, Unreachable() %v", rep.ByCode, rep.Unreachable())
	}
}

// lateReply holds every request until ctx ends; then the images named in
// codes get that error reply, as if it had arrived just then, and the
// others get ctx's error.
type lateReply struct {
	codes   map[string]int
	started chan string
}

func (l lateReply) Image(ctx context.Context, _ contract.Function, image string, _ ...client.CallOption) (*client.Reply, error) {
	l.started <- image
	<-ctx.Done()
	if c, ok := l.codes[image]; ok {
		return nil, &contract.Error{Code: c, Message: image + ": scripted"}
	}
	return nil, ctx.Err()
}

// TestPrefetchInterruptedErrorReply: an error reply that arrives as the run
// is interrupted is a failure with its code; a request that got no reply
// is skipped.
func TestPrefetchInterruptedErrorReply(t *testing.T) {
	req := lateReply{codes: map[string]int{"missing": 404}, started: make(chan string, 2)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *prefetch.Report)
	go func() {
		done <- prefetch.Run(ctx, req, []string{"missing", "slow"}, prefetch.Options{
			Functions: []contract.Function{contract.ManifestDigest}, Concurrency: 2, Retries: 3,
		})
	}()
	<-req.started
	<-req.started
	cancel()
	r := <-done
	if !r.Interrupted || r.Failed != 1 || r.Skipped != 1 || r.ByCode["404"] != 1 || len(r.Failures) != 1 || r.Failures[0].Reference != "missing" {
		t.Fatalf("interrupted %v failed %d skipped %d by code %v failures %+v", r.Interrupted, r.Failed, r.Skipped, r.ByCode, r.Failures)
	}
}

// busyOnce answers 503 at once and says so on answered.
type busyOnce struct{ answered chan struct{} }

func (b busyOnce) Image(context.Context, contract.Function, string, ...client.CallOption) (*client.Reply, error) {
	b.answered <- struct{}{}
	return nil, &contract.Error{Code: 503, Message: "worker over its queue limit; retry"}
}

// TestPrefetchInterruptedDuringBackoff: a 503 is not a request's last
// word while a retry is due, so a run interrupted then (before or during
// the backoff) skips that request rather than report the 503 as its
// failure.
func TestPrefetchInterruptedDuringBackoff(t *testing.T) {
	req := busyOnce{answered: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *prefetch.Report)
	go func() {
		done <- prefetch.Run(ctx, req, []string{"busy"}, prefetch.Options{
			Functions: []contract.Function{contract.ManifestDigest}, Retries: 3,
			Backoff: time.Hour, MaxBackoff: time.Hour, // the retry never comes by itself
		})
	}()
	<-req.answered
	cancel()
	r := <-done
	if !r.Interrupted || r.Failed != 0 || r.Skipped != 1 || len(r.Failures) != 0 {
		t.Fatalf("interrupted %v failed %d skipped %d failures %+v", r.Interrupted, r.Failed, r.Skipped, r.Failures)
	}
}

// notFound answers every image 404, naming it first as a worker does.
type notFound struct{}

func (notFound) Image(_ context.Context, _ contract.Function, image string, _ ...client.CallOption) (*client.Reply, error) {
	return nil, &contract.Error{Code: 404, Message: image + ": manifest unknown"}
}

// TestWriteTextNamesEachImageOnce: the failure lines name the reference
// once, though the worker's message starts with it too.
func TestWriteTextNamesEachImageOnce(t *testing.T) {
	rep := prefetch.Run(context.Background(), notFound{}, []string{"127.0.0.1:5000/app:nope"}, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest},
	})
	var out strings.Builder
	prefetch.WriteText(&out, rep, 10)
	if want := "  404 manifest_digest 127.0.0.1:5000/app:nope: manifest unknown\n"; !strings.Contains(out.String(), want) {
		t.Fatalf("text summary:\n%s\nwant the line %q", out.String(), want)
	}
}

// staleFleet answers every request stale, as a fleet whose registry is
// failing does.
type staleFleet struct{}

func (staleFleet) Image(context.Context, contract.Function, string, ...client.CallOption) (*client.Reply, error) {
	return &client.Reply{Body: []byte("{}"), Cache: contract.Stale, Age: time.Hour}, nil
}

// TestPrefetchCountsStale: stale answers are counted apart from hits, in
// the report and in the text summary, which says the cache is not fresh.
func TestPrefetchCountsStale(t *testing.T) {
	rep := prefetch.Run(context.Background(), staleFleet{}, []string{"a", "b"}, prefetch.Options{
		Functions: []contract.Function{contract.ManifestDigest},
	})
	if rep.OK != 2 || rep.Stale != 2 || rep.Hits != 0 {
		t.Fatalf("report %+v, want 2 ok, both stale", rep)
	}
	var out strings.Builder
	prefetch.WriteText(&out, rep, 10)
	if !strings.Contains(out.String(), "stale    2") || !strings.Contains(out.String(), "not fresh") {
		t.Fatalf("text summary does not show the stale answers:\n%s", out.String())
	}
}
