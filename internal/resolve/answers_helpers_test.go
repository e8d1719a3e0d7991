package resolve

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
)

// mustAnswer answers req with r and fails the test on an error.
func mustAnswer(t *testing.T, r *Resolver, req Request) Answer {
	t.Helper()
	a, err := r.Answer(context.Background(), req)
	if err != nil {
		t.Fatalf("%s %s (platform %q): %v", req.Function, req.Payload, req.Platform, err)
	}
	return a
}

// wantError fails unless err is a *contract.Error with code, whose
// one-line message contains part.
func wantError(t *testing.T, err error, code int, part string) *contract.Error {
	t.Helper()
	var ce *contract.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want error %d, got %v", code, err)
	}
	if ce.Code != code {
		t.Fatalf("want code %d, got %d: %s", code, ce.Code, ce.Message)
	}
	if !strings.Contains(ce.Message, part) {
		t.Fatalf("message %q does not contain %q", ce.Message, part)
	}
	if strings.ContainsAny(ce.Message, "\r\n") {
		t.Fatalf("message is not one line: %q", ce.Message)
	}
	return ce
}

// digestJSON is manifest_digest's answer for digest d.
func digestJSON(d string) []byte { return []byte(`{"digest":"` + d + `"}`) }

// sameCounts reports whether two registry request counts are equal.
func sameCounts(got, want map[string]int) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}
