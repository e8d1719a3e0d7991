package rediscache

import (
	"time"

	"github.com/maypok86/otter/v2"
)

// DefaultMemorySize bounds the memory tier, in bytes.
const DefaultMemorySize = 64 << 20

// MaxKeyLen bounds the keys either tier keeps, in bytes: a longer key is
// never stored (nor asked for in Redis). Real keys are a few hundred
// bytes (a function, a platform, a reference of at most 255 bytes of
// path); only a bug or an unbounded input makes one longer, and it must
// not fill memory or Redis.
const MaxKeyLen = 4 << 10

// entryOverhead approximates what an entry costs beyond its key and body.
const entryOverhead = 96

// Memory is the per-worker tier, bounded in bytes. It never blocks on the
// network, so a hit can be answered inside a NATS callback. A Memory of
// size 0 keeps nothing, so that every hit asks Redis.
type Memory struct {
	c   *otter.Cache[string, Entry] // nil when off
	now func() time.Time
}

// NewMemory returns a memory tier of at most maxBytes (0: off); now is
// the clock entries expire by (nil: time.Now).
func NewMemory(maxBytes uint64, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	m := &Memory{now: now}
	if maxBytes == 0 {
		return m
	}
	m.c = otter.Must(&otter.Options[string, Entry]{
		MaximumWeight: maxBytes,
		Weigher: func(k string, e Entry) uint32 {
			return uint32(min(len(k)+len(e.Body)+entryOverhead, 1<<31))
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, Entry]) time.Duration {
			return e.Value.Expires.Sub(m.now())
		}),
	})
	return m
}

// Get returns key's entry while it is live.
func (m *Memory) Get(key string) (Entry, bool) {
	if m.c == nil {
		return Entry{}, false
	}
	e, ok := m.c.GetIfPresent(key)
	if !ok || !m.now().Before(e.Expires) {
		return Entry{}, false
	}
	return e, true
}

// Set keeps e until it expires. A key over MaxKeyLen is not kept.
func (m *Memory) Set(key string, e Entry) {
	if m.c != nil && len(key) <= MaxKeyLen {
		m.c.Set(key, e)
	}
}
