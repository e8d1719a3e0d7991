package prefetch_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/internal/prefetch"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/testenv"
)

var allFunctions = []client.Function{client.ManifestDigest, client.OCIManifest, client.OCIManifestConfig}

// TestPrefetchWarmsCache prefetches 300 images through a real worker and
// then asks for every one of them again: all hits, no registry traffic.
func TestPrefetchWarmsCache(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testenv.StartWorker(t, testenv.WorkerConfig{NATSURL: ns.ClientURL()})
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
			if r.Cache != queue.CacheHit {
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
	testenv.StartWorker(t, testenv.WorkerConfig{NATSURL: ns.ClientURL()})
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
		Functions: []client.Function{client.ManifestDigest, client.OCIManifestConfig}, Retries: 3, Backoff: time.Millisecond,
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
	if !rep.Reached() {
		t.Fatal("Reached() = false although the worker answered")
	}
}

// responder answers manifest_digest on a NATS server like a worker would,
// with a scripted sequence of answers per image: a code, or 200.
type responder struct {
	mu    sync.Mutex
	calls map[string]int
}

func startResponder(t *testing.T, url string, script func(image string, call int) (code int, retryAfter string)) *responder {
	t.Helper()
	r := &responder{calls: map[string]int{}}
	nc := testenv.Connect(t, url)
	_, err := nc.Subscribe(client.ManifestDigest.Subject("kubewarden"), func(m *nats.Msg) {
		image, _ := strconv.Unquote(string(m.Data))
		r.mu.Lock()
		r.calls[image]++
		n := r.calls[image]
		r.mu.Unlock()
		reply := nats.NewMsg(m.Reply)
		code, retryAfter := script(image, n)
		if code == 200 {
			reply.Header.Set(client.HeaderCache, "miss")
			reply.Data = []byte(`{"digest":"sha256:0000"}`)
		} else {
			reply.Header.Set(client.HeaderErrorCode, strconv.Itoa(code))
			reply.Header.Set(client.HeaderError, fmt.Sprintf("%s: scripted %d", image, code))
			if retryAfter != "" {
				reply.Header.Set(client.HeaderRetryAfter, retryAfter)
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
				Functions: []client.Function{client.ManifestDigest}, Retries: tc.retries,
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
			var ce *client.Error
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
	if rep.Reached() {
		t.Fatal("Reached() = true with no worker")
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

func (b blocking) Image(ctx context.Context, fn client.Function, image string, _ ...client.CallOption) (*client.Reply, error) {
	if b.fast[image] {
		return &client.Reply{Body: []byte("{}"), Cache: "hit"}, nil
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
			Functions: []client.Function{client.ManifestDigest}, Concurrency: 2,
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
