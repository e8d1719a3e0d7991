package httpfront_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
)

// TestErrorCodes: each contract code is the HTTP status with
// {"code","message"}, Retry-After on 429 only, and a Gatekeeper item's
// "<code>: <message>"; an error without a code, or with one outside the
// contract, is a CodeInternal (500), never a crash.
func TestErrorCodes(t *testing.T) {
	type want struct {
		code       int
		message    string
		retryAfter string
	}
	cases := map[string]struct {
		err  error
		want want
	}{
		"no code":               {errors.New("boom"), want{500, "internal error: boom", ""}},
		"a nil *contract.Error": {(*contract.Error)(nil), want{500, "internal error", ""}},
		"a two-line message":    {contract.Errorf(502, "a\nb"), want{502, "a b", ""}},
		"Retry-After off 429":   {&contract.Error{Code: 503, Message: "busy", RetryAfter: "30"}, want{503, "busy", ""}},
	}
	for _, code := range contract.Codes() {
		cases[strconv.Itoa(code)] = struct {
			err  error
			want want
		}{&contract.Error{Code: code, Message: "img: cause", RetryAfter: "30"}, want{code, "img: cause", map[bool]string{true: "30"}[code == 429]}}
	}
	for _, code := range []int{-1, 0, 42, 200, 302, 418, 501, 600, 999, 1000, 1 << 40} {
		cases[fmt.Sprintf("code %d", code)] = struct {
			err  error
			want want
		}{contract.Errorf(code, "forged"), want{500, fmt.Sprintf("internal error: code %d outside the contract: forged", code), ""}}
	}
	image := func(name string) string { return strings.ReplaceAll(name, " ", "_") }
	res := newStub()
	for name, c := range cases {
		res.fail(image(name), c.err)
	}
	_, srv := start(t, res)
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			code, h, body := do(t, srv.URL+"/v1/manifest_digest?image="+url.QueryEscape(image(name)), "GET", "", nil)
			var e struct {
				Code    int
				Message string
			}
			if code != c.want.code || json.Unmarshal([]byte(body), &e) != nil || e.Code != c.want.code || !strings.HasPrefix(e.Message, c.want.message) {
				t.Errorf("%d %s, want %d with {\"code\":%d,\"message\":%q…}", code, body, c.want.code, c.want.code, c.want.message)
			}
			if got := h.Get("Retry-After"); got != c.want.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, c.want.retryAfter)
			}
		})
	}
	var images []string
	for name := range cases {
		images = append(images, image(name))
	}
	for i, it := range gk(t, srv.URL, "manifest_digest", keys(images...), nil).items(t) {
		c := cases[strings.ReplaceAll(images[i], "_", " ")]
		if want := fmt.Sprintf("%d: %s", c.want.code, c.want.message); it.Key != images[i] || !strings.HasPrefix(it.Error, want) {
			t.Errorf("item %+v, want key %s and error %q…", it, images[i], want)
		}
	}
}
