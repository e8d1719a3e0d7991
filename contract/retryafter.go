package contract

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxRetryAfter caps what a Retry-After may ask for: a registry (or a
// fleet reply) asking for longer is taken to ask for this long, so that a
// date in 2100 or a huge number of seconds holds nothing back for decades
// or overflows a duration.
const MaxRetryAfter = time.Hour

// ParseRetryAfter reads a Retry-After value, delay-seconds or an HTTP
// date (RFC 9110 §10.2.3), as a wait from now. A date in the past is no
// wait (0, true); anything over MaxRetryAfter is MaxRetryAfter. ok is
// false when v is empty or neither form ("-5", "soon").
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if isDigits(v) {
		// delay-seconds; past int64 it is still a number, and too long.
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil || s > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter, true
		}
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return clampRetryAfter(t.Sub(now).Round(time.Second)), true
	}
	return 0, false
}

func clampRetryAfter(d time.Duration) time.Duration { return min(max(d, 0), MaxRetryAfter) }

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
