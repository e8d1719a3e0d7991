package queue

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Shutdown stops taking requests, answers every request already taken and
// returns. If ctx ends first, the requests still waiting are answered 503
// at once, and Shutdown returns ctx's error once all are answered.
func (s *Server) Shutdown(ctx context.Context) error {
	for _, sub := range s.subs {
		if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			s.log.Warn("draining subscription", zap.String("subject", sub.Subject), zap.Error(err))
		}
	}
	done := make(chan struct{})
	go func() {
		// Once every message the client holds has gone through its
		// callback, the in-flight count is final: a drained subscription
		// becomes invalid then, and a disconnected one gets no more
		// messages, so an empty pending queue is enough.
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for (s.subsValid() && (s.nc.IsConnected() || !s.subsIdle()) || s.callbacks.Load() > 0) && s.life.Err() == nil {
			select {
			case <-t.C:
			case <-s.life.Done():
			}
		}
		s.inflight.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.cancelled.Store(s.busy.Load())
		s.hardStop()
		<-done
	}
	s.hardStop()
	// Replies written while disconnected wait in the reconnect buffer:
	// give the reconnect the rest of ctx, then push them out. A server
	// that answered nothing offline (or never connected), or whose buffer
	// was flushed by a reconnect since, returns at once.
	if n, _ := s.nc.Buffered(); s.repliedOffline.Load() && n > 0 {
		t := time.NewTicker(10 * time.Millisecond)
		for !s.nc.IsConnected() && ctx.Err() == nil && !s.nc.IsClosed() {
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		}
		t.Stop()
	}
	if s.nc.IsConnected() {
		if ferr := s.nc.FlushTimeout(5 * time.Second); ferr != nil && err == nil {
			err = ferr
		}
	}
	return err
}

// Cancelled is how many requests a Shutdown whose context ended cut
// short: they were answered 503.
func (s *Server) Cancelled() int { return int(s.cancelled.Load()) }

// subsIdle reports whether no subscription holds undelivered messages.
func (s *Server) subsIdle() bool {
	for _, sub := range s.subs {
		if n, _, err := sub.Pending(); err == nil && n > 0 {
			return false
		}
	}
	return true
}

func (s *Server) subsValid() bool {
	for _, sub := range s.subs {
		if sub.IsValid() {
			return true
		}
	}
	return false
}
