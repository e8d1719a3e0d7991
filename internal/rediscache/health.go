package rediscache

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// health tracks Redis outages for the tier and the fleet lock: one log
// line per outage, a counter per failed command, and during an outage one
// probe a second instead of a command timeout on every request.
type health struct {
	log       *zap.Logger
	onError   func(op string)
	opTimeout time.Duration
	now       func() time.Time

	down      atomic.Bool
	lastProbe atomic.Int64 // unix nanoseconds of the last command tried during an outage
}

// probeInterval is how often, during an outage, one command is let
// through to see whether Redis is back.
const probeInterval = time.Second

// op bounds one Redis command, so that a sick Redis costs a request at
// most opTimeout before it is served upstream.
func (h *health) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, h.opTimeout)
}

// available reports whether Redis answered its last command.
func (h *health) available() bool { return !h.down.Load() }

// skip reports whether to leave Redis alone. During an outage only one
// command a second goes to it, as a probe: a Redis that drops packets
// would otherwise cost every request its command timeouts.
func (h *health) skip() bool {
	if !h.down.Load() {
		return false
	}
	now := h.now().UnixNano()
	last := h.lastProbe.Load()
	if now-last < int64(probeInterval) {
		return true
	}
	return !h.lastProbe.CompareAndSwap(last, now)
}

// failed records a failed command. A command cut short by its caller's
// context (a request given up, a worker stopping) says nothing about
// Redis and is not counted as an outage.
func (h *health) failed(caller context.Context, op string, err error) {
	if caller.Err() != nil {
		return
	}
	h.onError(op)
	// The next probe is a second after this failure, not after the start
	// of the command that failed: a Redis that never answers takes longer
	// than that to time out, and would otherwise be probed by every
	// command.
	h.lastProbe.Store(h.now().UnixNano())
	if h.down.CompareAndSwap(false, true) {
		h.log.Warn("redis unavailable: answering from memory and registries until it is back",
			zap.String("op", op), zap.Error(err))
	}
}

func (h *health) ok() {
	if h.down.CompareAndSwap(true, false) {
		h.log.Info("redis available again: sharing the cache with the fleet")
	}
}
