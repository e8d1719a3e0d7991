package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// TestErrorReplies: every code of the contract is replied in the NATS
// service-framework convention, an empty body with Nats-Service-Error-Code
// and a one-line Nats-Service-Error (contract.Bound), plus Retry-After on
// a 429 that has one, and no Regcap-Cache; the observer is told the code
// and no outcome. An error from Lookup (a 400, in the callback) and from
// Resolve (on a goroutine) are replied alike.
func TestErrorReplies(t *testing.T) {
	type errCase struct {
		name    string
		err     error
		headers map[string]string
	}
	var cases []errCase
	for _, code := range contract.Codes() {
		ce := contract.Errorf(code, "registry.example.com/app:1.0: cause of a %d", code)
		h := map[string]string{contract.HeaderErrorCode: strconv.Itoa(code), contract.HeaderError: ce.Message}
		if code == 429 {
			ce.RetryAfter = "30"
			h[contract.HeaderRetryAfter] = "30"
		}
		cases = append(cases, errCase{strconv.Itoa(code), ce, h})
	}
	long := strings.Repeat("é", contract.MaxMessage)
	cases = append(cases,
		errCase{"429 without Retry-After", contract.Errorf(429, "app: no Retry-After given"),
			map[string]string{contract.HeaderErrorCode: "429", contract.HeaderError: "app: no Retry-After given"}},
		errCase{"429 with an HTTP date", &contract.Error{Code: 429, Message: "app: slow down", RetryAfter: "Wed, 21 Oct 2026 07:28:00 GMT"},
			map[string]string{contract.HeaderErrorCode: "429", contract.HeaderError: "app: slow down", contract.HeaderRetryAfter: "Wed, 21 Oct 2026 07:28:00 GMT"}},
		errCase{"message over lines", contract.Errorf(502, "app: registry said\r\n<html>\x00bad\tgateway</html>\nend"),
			map[string]string{contract.HeaderErrorCode: "502", contract.HeaderError: "app: registry said  <html> bad\tgateway</html> end"}},
		errCase{"message over the bound", contract.Errorf(404, "%s", long),
			map[string]string{contract.HeaderErrorCode: "404", contract.HeaderError: contract.Bound(long)}},
		errCase{"Retry-After over lines", &contract.Error{Code: 429, Message: "app: slow down", RetryAfter: "30\r\nX-Injected: 1"},
			map[string]string{contract.HeaderErrorCode: "429", contract.HeaderError: "app: slow down", contract.HeaderRetryAfter: "30  X-Injected: 1"}},
		errCase{"wrapped", fmt.Errorf("resolving: %w", contract.Errorf(504, "app: did not answer in time")),
			map[string]string{contract.HeaderErrorCode: "504", contract.HeaderError: "app: did not answer in time"}},
		// An error without a code is a bug behind the front: said so, not
		// dropped.
		errCase{"no code", errors.New("boom"),
			map[string]string{contract.HeaderErrorCode: "500", contract.HeaderError: "internal error: boom"}},
	)
	for _, via := range []string{"Lookup", "Resolve"} {
		for _, tc := range cases {
			t.Run(via+"/"+tc.name, func(t *testing.T) {
				// An answer alongside the error is not sent.
				stray := resolve.Answer{Body: []byte(`{"stray":true}`), Outcome: contract.Hit}
				res := &stub{resolve: func(context.Context, *resolve.Miss) (resolve.Answer, error) { return stray, tc.err }}
				if via == "Lookup" {
					res.lookup = func(resolve.Request) (resolve.Answer, *resolve.Miss, error) { return stray, nil, tc.err }
				}
				f := startFront(t, res)
				r := f.ask(t, contract.ManifestDigest, []byte(`"x"`), nil)
				if len(r.Data) != 0 {
					t.Errorf("error reply has a body: %q", r.Data)
				}
				wantHeaders(t, r.Header, tc.headers)
				msg := r.Header.Get(contract.HeaderError)
				if strings.ContainsAny(msg, "\r\n") || len(msg) > contract.MaxMessage {
					t.Errorf("message of %d bytes, not one line within %d: %q", len(msg), contract.MaxMessage, msg)
				}
				code, _ := strconv.Atoi(tc.headers[contract.HeaderErrorCode])
				if got := f.obs.wait(t, 1)[0]; got != (observation{contract.ManifestDigest, code, ""}) {
					t.Errorf("observer told %+v, want code %d and no outcome", got, code)
				}
			})
		}
	}
}
