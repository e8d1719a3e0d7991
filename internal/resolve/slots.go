package resolve

import (
	"context"
	"sync"
	"time"
)

// slots bound the fetches in flight: all of them, and those to any one
// registry. A registry's share adapts to how it answers, so that one
// that hangs holds few slots, and then none:
//
//   - A registry starts with a few slots (slowStart) and doubles them
//     with each answer up to its share (--concurrency-per-registry), as
//     TCP's slow start does: a cold burst on a healthy registry soon has
//     its whole share, one that never answers keeps a few.
//   - Each fetch that timed out (504) halves its slots, down to one; each
//     answer adds one back. A registry that answers, even with an error
//     or corrupt content, holds its slots only briefly: only hanging
//     ones are held back.
//   - After breakAfter timeouts in a row its circuit opens (as Envoy's
//     consecutive_gateway_failure): for a cool-down, doubling
//     with each opening up to maxCoolDown, its fetches fail at once with
//     its last failure, then one probe is let through; an answer closes
//     the circuit.
//
// So a miss for a healthy registry finds a slot whatever the others do.
type slots struct {
	size    int // slots in the pool
	per     int // the most one registry may hold
	reserve int // kept for registries that hold none
	now     func() time.Time

	mu   sync.Mutex
	used int
	wake chan struct{} // closed when a slot frees or a registry's state changes
	byRe map[string]*registrySlots
}

// Breaker and slow-start settings.
const (
	slowStart   = 4
	breakAfter  = 5
	coolDown    = 5 * time.Second
	maxCoolDown = time.Minute
	// maxTracked bounds the registries whose state is kept while nothing
	// is in flight for them: hosts come from requests.
	maxTracked = 4096
)

type registrySlots struct {
	users    int // holding or waiting for a slot
	inUse    int
	limit    int
	grown    bool // past slow start: one more per answer, not twice as many
	failures int  // timeouts in a row
	opens    int  // circuit openings in a row
	until    time.Time
	probing  bool
	lastCode int
}

func newSlots(size, perRegistry int, now func() time.Time) *slots {
	return &slots{size: size, per: perRegistry, reserve: size / 4, now: now,
		wake: make(chan struct{}), byRe: map[string]*registrySlots{}}
}

// busy says why a fetch got no slot.
type busy struct {
	registry bool          // the registry's share stayed busy
	open     bool          // the registry's circuit is open
	failures int           // with open: its timeouts in a row
	code     int           // with open: its last failure's code
	retry    time.Duration // with open: until its next probe
}

// acquire takes a slot of registry's share and of the pool, waiting
// until ctx ends. A free slot is taken even when ctx has already ended. A
// registry whose circuit is open is refused at once. The last quarter of
// the pool is kept for registries that hold no slot: whatever the others
// hold, a miss for one more registry finds a slot.
func (s *slots) acquire(ctx context.Context, registry string) *busy {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.byRe[registry]
	if rs == nil {
		rs = &registrySlots{limit: min(slowStart, s.per)}
		s.byRe[registry] = rs
	}
	rs.users++
	probe := false // this caller is the half-open circuit's one probe
	for {
		if !probe {
			b, p := s.refuse(rs)
			if b != nil {
				rs.users--
				s.forget(registry, rs)
				return b
			}
			probe = p
		}
		if rs.inUse < rs.limit && s.used < s.size && (rs.inUse == 0 || s.size-s.used > s.reserve) {
			rs.inUse++
			s.used++
			return nil
		}
		// Which bound held it back, as last seen: a slot freed just as
		// the wait ends says nothing of why it waited.
		full := rs.inUse >= rs.limit
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			if probe {
				rs.probing = false // it never probed: let another try
			}
			rs.users--
			s.forget(registry, rs)
			return &busy{registry: full}
		}
	}
}

// refuse returns why rs's circuit refuses a fetch now, or nil. Past the
// cool-down one fetch is let through as the probe (probe true). s.mu is
// held.
func (s *slots) refuse(rs *registrySlots) (b *busy, probe bool) {
	if rs.opens == 0 {
		return nil, false
	}
	if left := rs.until.Sub(s.now()); left > 0 || rs.probing {
		return &busy{open: true, failures: rs.failures, code: rs.lastCode, retry: max(left, 0)}, false
	}
	rs.probing = true
	return nil, true
}

// An outcome is what a fetch said about its registry's health.
type outcome int

const (
	outcomeNone    outcome = iota // no fetch was made, or it says nothing (our own 503)
	outcomeAnswer                 // the registry answered, whatever it said
	outcomeFailure                // the registry did not answer in time
)

// outcomeOf classifies a fetch's error code (0: success).
func outcomeOf(code int) outcome {
	switch code {
	case 504:
		return outcomeFailure
	case 503:
		return outcomeNone
	}
	return outcomeAnswer
}

// release gives back what acquire took for registry, and adapts its
// share to o, what the fetch said (code: its error code, 0 for none).
func (s *slots) release(registry string, o outcome, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.byRe[registry]
	rs.inUse--
	rs.users--
	s.used--
	switch o {
	case outcomeAnswer:
		rs.failures, rs.opens, rs.probing = 0, 0, false
		if rs.grown {
			rs.limit = min(rs.limit+1, s.per)
		} else {
			rs.limit = min(rs.limit*2, s.per)
		}
	case outcomeFailure:
		rs.grown = true
		rs.limit = max(rs.limit/2, 1)
		rs.failures++
		rs.lastCode = code
		if rs.failures >= breakAfter || rs.probing {
			rs.probing = false
			rs.opens++
			rs.until = s.now().Add(min(coolDown<<min(rs.opens-1, 8), maxCoolDown))
		}
	case outcomeNone:
		rs.probing = false // the probe said nothing: let another try
	}
	close(s.wake)
	s.wake = make(chan struct{})
	s.forget(registry, rs)
}

// forget drops the state of a registry nobody uses once it is healthy,
// or when too many are tracked. s.mu is held.
func (s *slots) forget(registry string, rs *registrySlots) {
	if rs.users > 0 {
		return
	}
	if rs.failures == 0 && rs.opens == 0 || len(s.byRe) > maxTracked {
		delete(s.byRe, registry)
	}
}

// inFlight is the number of pool slots in use.
func (s *slots) inFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// RegistryState is what the fetch slots know of one registry, for
// metrics.
type RegistryState struct {
	// Queued is its resolutions pending, its share of --max-pending.
	Queued int
	// InFlight is the fetches to it now; Limit how many it may have.
	InFlight, Limit int
	// Open is true while its circuit is open or half-open.
	Open bool
}

// registries reports each tracked registry's state.
func (s *slots) registries() map[string]RegistryState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]RegistryState, len(s.byRe))
	for h, rs := range s.byRe {
		out[h] = RegistryState{InFlight: rs.inUse, Limit: rs.limit, Open: rs.opens > 0}
	}
	return out
}
