package rediscache

import (
	"sync"
	"time"
)

// logEvery is how often one cause is logged again while it lasts.
const logEvery = 10 * time.Minute

// logLimiter lets a log line through once per cause and logEvery, so that
// a cause every request meets (a Redis out of memory), or one someone
// repeats on purpose (forged notices), is one line, not a flood. Causes
// are this package's constants, a fixed set, so its map stays small.
type logLimiter struct {
	now  func() time.Time
	mu   sync.Mutex
	last map[string]time.Time
}

// first reports whether cause was not logged within logEvery, and if so
// counts it as logged now.
func (l *logLimiter) first(cause string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[cause]; ok && now.Sub(t) < logEvery {
		return false
	}
	if l.last == nil {
		l.last = map[string]time.Time{}
	}
	l.last[cause] = now
	return true
}

// logKey is key as logged: cut short, since a key may be long (an
// unbounded input), and a log line need only tell it apart.
func logKey(key string) string {
	const keep = 256
	if len(key) <= keep {
		return key
	}
	return key[:keep] + "…"
}
