package resolve

import (
	"time"

	"github.com/maypok86/otter/v2"
)

// Bounds of the in-process caches other than the memory tier: each is
// bounded in bytes (keys come from requests) and its entries expire.
const (
	decodedSize   = 4 << 20 // decoded requests
	decodedTTL    = 10 * time.Minute
	deadlinesSize = 8 << 20 // each back-off and refresh hold
)

// newDeadlines is a cache of key → moment, bounded in bytes, whose
// entries go at their moment: what is past says nothing any more.
func newDeadlines(now func() time.Time) *otter.Cache[string, time.Time] {
	return otter.Must(&otter.Options[string, time.Time]{
		MaximumWeight: deadlinesSize,
		Weigher:       func(k string, _ time.Time) uint32 { return uint32(len(k) + 64) },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, time.Time]) time.Duration {
			return max(e.Value.Sub(now()), time.Millisecond)
		}),
	})
}
