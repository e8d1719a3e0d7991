package httpfront_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/httpfront"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// TestGatekeeperTimeout: at --http-timeout the keys ready are answered
// and the others get a 504 item saying whether their resolution started
// (it goes on, fills the cache, and keeps its place in the budget until
// it ends, uncancelled) or never did (the batch's share was busy).
func TestGatekeeperTimeout(t *testing.T) {
	for _, c := range []struct {
		name  string
		share int
		want  []string // per key: a value, or an error's start
	}{
		{"started", 8, []string{`"sha256:`, "504: not resolved within 100ms (--http-timeout); the fetch goes on and fills the cache, retry", `"sha256:`}},
		{"never started", 1, []string{`"sha256:`, "504: not resolved within 100ms", "504: not started within 100ms (--http-timeout): this batch names 2 images not in memory, resolved 1 at a time (--http-batch-concurrency); retry"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := newStub().
				set("hot", stubAnswer{Answer: resolve.Answer{Body: []byte(digestBody), Outcome: contract.Hit}, memory: true}).
				answer("hung", digestBody, contract.Miss).
				answer("fast", digestBody, contract.Miss)
			release := res.hold(t, "hung")
			h, srv := start(t, res, httpfront.WithTimeout(100*time.Millisecond), httpfront.WithBatchConcurrency(c.share))
			items := gk(t, srv.URL, "manifest_digest", keys("hot", "hung", "fast"), nil).items(t)
			for i, w := range c.want {
				got := items[i].Error
				if strings.HasPrefix(w, `"`) {
					got = string(items[i].Value)
				}
				if !strings.HasPrefix(got, w) {
					t.Errorf("item %d (%s): %q, want %q…", i, items[i].Key, got, w)
				}
			}
			if n := h.InFlight(); n != 1 {
				t.Errorf("%d resolutions in flight after the reply, want the hung one still counted", n)
			}
			release()
			testenv.Eventually(t, "the hung resolution to end and give its place back", func() bool { return h.InFlight() == 0 })
			if n := res.cancelled(); n != 0 {
				t.Errorf("%d resolutions were cancelled when the reply went; they should run to their end", n)
			}
			if c.share == 1 {
				if n := res.resolutions("manifest_digest:fast"); n != 0 {
					t.Errorf("a key past the timeout was resolved %d times after its 504, want never", n)
				}
			}
		})
	}
}

// TestPlainOutlivesCaller: a plain request whose caller gives up goes on
// to its end, holding its place in the budget, not cancelled.
func TestPlainOutlivesCaller(t *testing.T) {
	res := newStub().answer("hung", digestBody, contract.Miss)
	release := res.hold(t, "hung")
	h, srv := start(t, res)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/manifest_digest?image=hung", nil)
	errs := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errs <- err
	}()
	<-res.started
	cancel()
	if err := <-errs; err == nil {
		t.Fatal("answered while held")
	}
	if n := h.InFlight(); n != 1 {
		t.Errorf("%d in flight after the caller left, want 1 until the resolution ends", n)
	}
	release()
	testenv.Eventually(t, "the resolution to end", func() bool { return h.InFlight() == 0 })
	if n := res.cancelled(); n != 0 {
		t.Errorf("the resolution was cancelled with its caller")
	}
}
