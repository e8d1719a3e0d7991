package prefetch

import (
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{" 30 ", 30 * time.Second},
		{"-5", 0},
		{"Sat, 28 Nov 2026 12:01:30 GMT", 90 * time.Second},
		{"Sat, 28 Nov 2026 11:00:00 GMT", 0}, // in the past
		{"soon", 0},
	}
	for _, tc := range cases {
		if got, _ := contract.ParseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestBackoffDelay: the delay doubles from the base up to the limit and
// stays there, however many retries are allowed; a shift would overflow
// (250ms<<36 is negative) and then panic in the jitter.
func TestBackoffDelay(t *testing.T) {
	base, limit := 250*time.Millisecond, 10*time.Second
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, limit, limit}
	for i, w := range want {
		if got := backoffDelay(i, base, limit); got != w {
			t.Errorf("backoffDelay(%d) = %v, want %v", i, got, w)
		}
	}
	for _, tc := range []struct{ base, limit time.Duration }{
		{base, limit}, {time.Nanosecond, time.Hour}, {time.Nanosecond, time.Duration(1<<63 - 1)}, {time.Minute, time.Second},
	} {
		prev := time.Duration(0)
		for attempt := range 200 {
			d := backoffDelay(attempt, tc.base, tc.limit)
			if d <= 0 || d > tc.limit || d < prev {
				t.Fatalf("backoffDelay(%d, %v, %v) = %v after %v: want it in (0, limit], never decreasing", attempt, tc.base, tc.limit, d, prev)
			}
			prev = d
			_ = jitter(d) // must not panic
		}
		if d := backoffDelay(1000, tc.base, tc.limit); d != tc.limit {
			t.Fatalf("backoffDelay(1000, %v, %v) = %v, want the limit", tc.base, tc.limit, d)
		}
	}
}

// TestJitter: the delay is drawn from [d/2, d), as the comment says.
func TestJitter(t *testing.T) {
	for _, d := range []time.Duration{2, 3, 7, 250 * time.Millisecond, 10 * time.Second} {
		for range 1000 {
			if j := jitter(d); j < d/2 || j >= d {
				t.Fatalf("jitter(%v) = %v, want it in [%v, %v)", d, j, d/2, d)
			}
		}
	}
	if j := jitter(1); j != 1 {
		t.Fatalf("jitter(1ns) = %v, want 1ns", j)
	}
}
