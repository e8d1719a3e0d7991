package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// TestReplyHeadersPerOutcome: a success is the body unchanged and one
// Regcap-Cache header naming the outcome, plus Regcap-Age in whole seconds
// for a stale one, and nothing else; the observer is told code 0 and the
// outcome. The same holds for an answer from Lookup (in the callback) and
// from Resolve (on a goroutine).
func TestReplyHeadersPerOutcome(t *testing.T) {
	body := []byte(`{"digest":"sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"}`)
	cases := []struct {
		name    string
		answer  resolve.Answer
		headers map[string]string
	}{
		{"hit", resolve.Answer{Outcome: contract.Hit}, map[string]string{contract.HeaderCache: "hit"}},
		{"miss", resolve.Answer{Outcome: contract.Miss}, map[string]string{contract.HeaderCache: "miss"}},
		{"shared", resolve.Answer{Outcome: contract.Shared}, map[string]string{contract.HeaderCache: "shared"}},
		{"stale", resolve.Answer{Outcome: contract.Stale, Age: 2700 * time.Millisecond}, map[string]string{contract.HeaderCache: "stale", contract.HeaderAge: "2"}},
		{"stale just fetched", resolve.Answer{Outcome: contract.Stale, Age: 300 * time.Millisecond}, map[string]string{contract.HeaderCache: "stale", contract.HeaderAge: "0"}},
		{"stale an hour old", resolve.Answer{Outcome: contract.Stale, Age: time.Hour}, map[string]string{contract.HeaderCache: "stale", contract.HeaderAge: "3600"}},
	}
	for _, via := range []string{"Lookup", "Resolve"} {
		for _, tc := range cases {
			t.Run(via+"/"+tc.name, func(t *testing.T) {
				a := tc.answer
				a.Body = body
				res := &stub{resolve: func(context.Context, *resolve.Miss) (resolve.Answer, error) { return a, nil }}
				if via == "Lookup" {
					res.lookup = hit(a)
				}
				f := startFront(t, res)
				r := f.ask(t, contract.OCIManifestConfig, []byte(`"x"`), nil)
				if string(r.Data) != string(body) {
					t.Errorf("body %q, want %q", r.Data, body)
				}
				wantHeaders(t, r.Header, tc.headers)
				if got := f.obs.wait(t, 1)[0]; got != (observation{contract.OCIManifestConfig, 0, a.Outcome}) {
					t.Errorf("observer told %+v, want code 0 and outcome %s", got, a.Outcome)
				}
				if _, resolves := res.asked(); (len(resolves) == 0) != (via == "Lookup") {
					t.Errorf("Resolve asked %d times, answering via %s", len(resolves), via)
				}
			})
		}
	}
}

// wantHeaders fails unless h holds exactly the headers in want, once each.
func wantHeaders(t *testing.T, h nats.Header, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := h.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("header %s: %q, want %q", k, got, v)
		}
	}
	for k := range h {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected header %s: %q", k, h.Values(k))
		}
	}
}
