package httpfront_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/httpfront"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// TestBatchShare: a batch resolves at most --http-batch-concurrency
// distinct entries at a time, however many keys it has, and answers them
// all.
func TestBatchShare(t *testing.T) {
	const share, n = 4, 40
	res := newStub()
	ks := numbered("app:", n)
	var releases []func()
	for _, k := range ks {
		res.answer(k, digestBody, contract.Miss)
		releases = append(releases, res.hold(t, k))
	}
	h, srv := start(t, res, httpfront.WithBatchConcurrency(share), httpfront.WithTimeout(time.Minute))
	replies := make(chan string, 1)
	go func() {
		// Not gk: a goroutine must not call t.Fatal.
		resp, err := http.Post(srv.URL+"/gatekeeper/v1/manifest_digest", "application/json", strings.NewReader(keys(ks...)))
		if err != nil {
			replies <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		replies <- string(b)
	}()
	for range share {
		<-res.started
	}
	// The share is taken and held: no other key may start. The wait only
	// gives a front without a share the time to show it; it never fails
	// a front with one.
	select {
	case img := <-res.started:
		t.Errorf("%s started while the batch's %d resolutions were all held", img, share)
	case <-time.After(100 * time.Millisecond):
	}
	if got := h.InFlight(); got != share {
		t.Errorf("%d in flight, want the batch's share, %d", got, share)
	}
	for _, r := range releases {
		r()
	}
	var pr providerResponse
	if reply := <-replies; json.Unmarshal([]byte(reply), &pr) != nil {
		t.Fatalf("reply: %.300s", reply)
	}
	items := pr.items(t)
	if len(items) != n {
		t.Fatalf("%d items, want %d", len(items), n)
	}
	for i, it := range items {
		if it.Key != ks[i] || it.Error != "" {
			t.Fatalf("item %d: %+v", i, it)
		}
	}
	if p := res.peak.Load(); p != share {
		t.Errorf("%d resolutions at once at most, want the share, %d", p, share)
	}
}

// TestInFlightBudget: past --http-max-inflight a key is a 503 at once,
// in a batch (an item) or alone (the status); resolutions left running at
// the timeout still count until they end; memory hits never count and
// are always answered.
func TestInFlightBudget(t *testing.T) {
	const budget = 3
	res := newStub().
		set("hot", stubAnswer{Answer: resolve.Answer{Body: []byte(digestBody), Outcome: contract.Hit}, memory: true}).
		answer("later", digestBody, contract.Miss)
	hung := numbered("hung:", 5)
	var releases []func()
	for _, k := range hung {
		releases = append(releases, res.hold(t, k))
	}
	h, srv := start(t, res, httpfront.WithMaxInFlight(budget), httpfront.WithTimeout(100*time.Millisecond))

	items := gk(t, srv.URL, "manifest_digest", keys(append(hung, "hot")...), nil).items(t)
	count := map[string]int{}
	for _, it := range items[:len(hung)] {
		count[it.Error[:3]]++
		if strings.HasPrefix(it.Error, "503: ") && it.Error != fmt.Sprintf("503: the HTTP front has %d resolutions in flight, its limit (--http-max-inflight); retry", budget) {
			t.Errorf("503 item: %q", it.Error)
		}
	}
	if count["504"] != budget || count["503"] != len(hung)-budget {
		t.Errorf("items %+v: want %d resolutions started (504 at the timeout) and %d refused (503)", items, budget, len(hung)-budget)
	}
	if v := string(items[len(hung)].Value); !strings.HasPrefix(v, `"sha256:`) {
		t.Errorf("memory hit: %+v, want its value whatever the budget", items[len(hung)])
	}
	if n := h.InFlight(); n != budget {
		t.Fatalf("%d in flight after the reply, want the %d left running", n, budget)
	}

	// The budget is still spent: misses are refused at once, hits served.
	if code, _, body := do(t, srv.URL+"/v1/manifest_digest?image=later", "GET", "", nil); code != 503 || !strings.Contains(body, "--http-max-inflight") {
		t.Errorf("plain miss over the budget: %d %s, want 503", code, body)
	}
	if code, _, _ := do(t, srv.URL+"/v1/manifest_digest?image=hot", "GET", "", nil); code != 200 {
		t.Errorf("plain memory hit over the budget: %d, want 200", code)
	}
	items = gk(t, srv.URL, "manifest_digest", keys("later", "hot"), nil).items(t)
	if !strings.HasPrefix(items[0].Error, "503: ") || items[1].Error != "" {
		t.Errorf("second batch over the budget: %+v, want a 503 item for the miss and the hit's value", items)
	}
	if n := res.resolutions("manifest_digest:later"); n != 0 {
		t.Errorf("a miss over the budget was resolved %d times", n)
	}

	for _, r := range releases {
		r()
	}
	testenv.Eventually(t, "the budget to come back", func() bool { return h.InFlight() == 0 })
	if code, h, _ := do(t, srv.URL+"/v1/manifest_digest?image=later", "GET", "", nil); code != 200 || h.Get("Regcap-Cache") != "miss" {
		t.Errorf("plain miss once the budget is back: %d", code)
	}
}
