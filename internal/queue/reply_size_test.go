package queue_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// TestReplyOverMaxPayloadIs413: a reply the NATS server would refuse is
// never dropped for the caller to time out: it is a 413 naming its real
// size, headers included as NATS counts them, and the server's
// max_payload, and the observer counts a 413. A reply of exactly
// max_payload still goes.
func TestReplyOverMaxPayloadIs413(t *testing.T) {
	const limit = 4096
	// What NATS counts besides the body: the header block of a success.
	headers := func(a resolve.Answer) int {
		n := len("NATS/1.0\r\n" + contract.HeaderCache + ": " + string(a.Outcome) + "\r\n" + "\r\n")
		if a.Outcome == contract.Stale {
			n += len(contract.HeaderAge + ": " + strconv.Itoa(int(a.Age.Seconds())) + "\r\n")
		}
		return n
	}
	miss := resolve.Answer{Outcome: contract.Miss}
	stale := resolve.Answer{Outcome: contract.Stale, Age: 42 * time.Second}
	cases := []struct {
		name   string
		answer resolve.Answer
		body   int // bytes of body
		fits   bool
	}{
		{"body and headers exactly max_payload", miss, limit - headers(miss), true},
		{"body fits, headers push it over", miss, limit - headers(miss) + 1, false},
		{"Regcap-Age pushes it over", stale, limit - headers(stale) + 1, false},
		{"stale, exactly max_payload", stale, limit - headers(stale), true},
		{"body alone over", miss, limit + 1, false},
		{"body far over", miss, 64 << 10, false},
	}
	ns := testenv.StartNATS(t, testenv.MaxPayload(limit))
	for _, via := range []string{"Lookup", "Resolve"} {
		for _, tc := range cases {
			t.Run(via+"/"+tc.name, func(t *testing.T) {
				a := tc.answer
				a.Body = []byte(strings.Repeat("x", tc.body))
				res := &stub{resolve: func(context.Context, *resolve.Miss) (resolve.Answer, error) { return a, nil }}
				if via == "Lookup" {
					res.lookup = hit(a)
				}
				f := startFrontOn(t, ns, res)
				r := f.ask(t, contract.OCIManifest, []byte(`"x"`), nil)
				size := tc.body + headers(a)
				obs := f.obs.wait(t, 1)[0]
				if tc.fits {
					if len(r.Data) != tc.body || r.Header.Get(contract.HeaderCache) != string(a.Outcome) {
						t.Fatalf("a reply of %d bytes with max_payload %d: %d bytes, headers %v", size, limit, len(r.Data), r.Header)
					}
					if obs != (observation{contract.OCIManifest, 0, a.Outcome}) {
						t.Errorf("observer told %+v", obs)
					}
					return
				}
				msg := r.Header.Get(contract.HeaderError)
				want := fmt.Sprintf("oci_manifest answer of %d bytes is over the NATS server's max_payload of %d bytes", size, limit)
				if r.Header.Get(contract.HeaderErrorCode) != "413" || !strings.Contains(msg, want) || len(r.Data) != 0 {
					t.Fatalf("a reply of %d bytes (%d of body) with max_payload %d: code %q, message %q, %d bytes of body; want 413 saying %q",
						size, tc.body, limit, r.Header.Get(contract.HeaderErrorCode), msg, len(r.Data), want)
				}
				if r.Header.Get(contract.HeaderCache) != "" {
					t.Errorf("the 413 carries Regcap-Cache %q", r.Header.Get(contract.HeaderCache))
				}
				if obs != (observation{contract.OCIManifest, 413, ""}) {
					t.Errorf("observer told %+v, want the 413", obs)
				}
			})
		}
	}
}
