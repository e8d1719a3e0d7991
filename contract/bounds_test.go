package contract_test

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/regcap/regcap/contract"
)

// TestBound: a message stays one line of at most MaxMessage bytes, cut
// at a rune boundary; one that already is comes back unchanged.
func TestBound(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"short", "busybox: not found", "busybox: not found"},
		{"newlines", "a\nb\r\nc\x00d\x7fe", "a b  c d e"},
		{"tab kept", "a\tb", "a\tb"},
		{"exactly the limit", strings.Repeat("x", contract.MaxMessage), strings.Repeat("x", contract.MaxMessage)},
	} {
		if got := contract.Bound(c.in); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	for _, in := range []string{strings.Repeat("x", contract.MaxMessage+1), strings.Repeat("é", contract.MaxMessage) + "\nrest"} {
		got := contract.Bound(in)
		if len(got) > contract.MaxMessage || !utf8.ValidString(got) || strings.ContainsAny(got, "\r\n") || !strings.HasSuffix(got, "…") {
			t.Errorf("Bound of %d bytes: %d bytes, valid UTF-8 %v, ends %q", len(in), len(got), utf8.ValidString(got), got[max(len(got)-4, 0):])
		}
	}
}

// TestParseRetryAfter: both forms of RFC 9110, clamped to
// [0, MaxRetryAfter]; anything else is no value.
func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 30 ", 30 * time.Second, true},
		{"3600", time.Hour, true},
		{"3601", contract.MaxRetryAfter, true},
		{"99999999999999999999999", contract.MaxRetryAfter, true}, // past int64
		{"-5", 0, false},
		{"1.5", 0, false},
		{"Sat, 28 Nov 2026 12:01:30 GMT", 90 * time.Second, true},
		{"Sat, 28 Nov 2026 11:00:00 GMT", 0, true}, // in the past
		{"Fri, 31 Dec 2100 23:59:59 GMT", contract.MaxRetryAfter, true},
		{"soon", 0, false},
	} {
		if got, ok := contract.ParseRetryAfter(c.in, now); got != c.want || ok != c.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}
