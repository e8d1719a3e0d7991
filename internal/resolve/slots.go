package resolve

import (
	"context"
	"sync"
)

// slots bound the fetches in flight: all of them, and those to any one
// registry, so that a registry that hangs holds at most its own share
// and a miss for a healthy registry still finds a slot.
type slots struct {
	all chan struct{}
	per int

	mu   sync.Mutex
	byRe map[string]*registrySlots // only registries with a fetch in flight or waiting
}

type registrySlots struct {
	ch    chan struct{}
	users int // holding or waiting for a slot
}

func newSlots(all, perRegistry int) *slots {
	return &slots{all: make(chan struct{}, all), per: perRegistry, byRe: map[string]*registrySlots{}}
}

// busy says which bound held a fetch back.
type busy struct{ registry bool }

// acquire takes a slot of registry's share, then one of the pool,
// waiting for each until ctx ends. A free slot is taken even when ctx has
// already ended.
func (s *slots) acquire(ctx context.Context, registry string) *busy {
	rs := s.join(registry)
	if !take(ctx, rs.ch) {
		s.leave(registry, rs)
		return &busy{registry: true}
	}
	if !take(ctx, s.all) {
		<-rs.ch
		s.leave(registry, rs)
		return &busy{}
	}
	return nil
}

// release gives back what acquire took for registry.
func (s *slots) release(registry string) {
	<-s.all
	s.mu.Lock()
	rs := s.byRe[registry]
	s.mu.Unlock()
	<-rs.ch
	s.leave(registry, rs)
}

func (s *slots) join(registry string) *registrySlots {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.byRe[registry]
	if rs == nil {
		rs = &registrySlots{ch: make(chan struct{}, s.per)}
		s.byRe[registry] = rs
	}
	rs.users++
	return rs
}

// leave forgets a registry nobody holds or waits for: the map is bounded
// by the fetches in flight, not by every host a caller ever named.
func (s *slots) leave(registry string, rs *registrySlots) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rs.users--; rs.users == 0 {
		delete(s.byRe, registry)
	}
}

func take(ctx context.Context, ch chan struct{}) bool {
	select {
	case ch <- struct{}{}:
		return true
	default:
	}
	select {
	case ch <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// inFlight is the number of pool slots in use.
func (s *slots) inFlight() int { return len(s.all) }
