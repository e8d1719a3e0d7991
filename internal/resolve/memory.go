package resolve

import (
	"time"

	"github.com/maypok86/otter/v2"
)

// DefaultMemorySize bounds the memory tier, in bytes.
const DefaultMemorySize = 64 << 20

// entryOverhead approximates what an entry costs beyond its key and body.
const entryOverhead = 96

// entry is a cached answer, fresh until one absolute moment and kept
// until another (later with --stale-if-error, to answer with while the
// registry fails). Every tier and every worker uses the same moments,
// counted from the fetch, so that no fresh answer is older than the TTL
// anywhere.
type entry struct {
	body    []byte
	fetched time.Time // when the fetch that made it started
	fresh   time.Time // served as a hit until then
	expires time.Time // kept until then
	// negative marks a cached 404 (--negative-ttl): body is its message.
	negative bool
}

// isFresh reports whether e may be served as a hit at now.
func (e entry) isFresh(now time.Time) bool { return now.Before(e.fresh) }

// memory is the per-worker tier, bounded in bytes. It never blocks on the
// network, so a hit can be answered inside a NATS callback.
type memory struct {
	c   *otter.Cache[string, entry]
	now func() time.Time
}

func newMemory(maxBytes uint64, now func() time.Time) *memory {
	m := &memory{now: now}
	m.c = otter.Must(&otter.Options[string, entry]{
		MaximumWeight: maxBytes,
		Weigher: func(k string, e entry) uint32 {
			return uint32(min(len(k)+len(e.body)+entryOverhead, 1<<31))
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, entry]) time.Duration {
			return e.Value.expires.Sub(m.now())
		}),
	})
	return m
}

// Get returns key's entry while it is live.
func (m *memory) Get(key string) (entry, bool) {
	e, ok := m.c.GetIfPresent(key)
	if !ok || !m.now().Before(e.expires) {
		return entry{}, false
	}
	return e, true
}

// Set keeps e until it expires.
func (m *memory) Set(key string, e entry) { m.c.Set(key, e) }

// noMemory is the memory tier turned off (--memory-cache-size 0).
type noMemory struct{}

func (noMemory) Get(string) (entry, bool) { return entry{}, false }
func (noMemory) Set(string, entry)        {}
