package rediscache

import (
	"crypto/sha256"
	"time"

	"github.com/maypok86/otter/v2"
)

// rejectLog remembers keys whose refused value was logged, so that a bad
// key is logged once, not on every read. Keys can be long (a reference, a
// platform), so it remembers their sha256: each entry costs the same few
// dozen bytes whatever the key, and the whole log at most
// rejectLogEntries of them (under 1 MiB). An entry is forgotten after
// rejectLogFor, so that a key refused again later is logged again.
type rejectLog struct {
	now  func() time.Time
	seen *otter.Cache[[sha256.Size]byte, time.Time] // when the key was logged
}

const (
	rejectLogEntries = 10_000
	rejectLogFor     = 10 * time.Minute
)

func newRejectLog(now func() time.Time) *rejectLog {
	return &rejectLog{now: now, seen: otter.Must(&otter.Options[[sha256.Size]byte, time.Time]{
		MaximumSize:      rejectLogEntries,
		ExpiryCalculator: otter.ExpiryWriting[[sha256.Size]byte, time.Time](rejectLogFor),
	})}
}

// first reports whether key was not logged within rejectLogFor, and if
// so counts it as logged now. The date is checked here as well as by the
// cache's expiry, so that the bound holds by the package's clock.
func (r *rejectLog) first(key string) bool {
	h := sha256.Sum256([]byte(key))
	now := r.now()
	if at, ok := r.seen.GetIfPresent(h); ok && now.Sub(at) < rejectLogFor {
		return false
	}
	r.seen.Set(h, now)
	return true
}
