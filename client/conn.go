package client

import (
	"context"
	"sync/atomic"

	"github.com/nats-io/nats.go"
)

// epoch is one spell of a NATS connection being up: calls sent during it
// are cancelled when it ends, and wait for the next one to retry.
type epoch struct {
	// lost is done when the connection is lost (or was not up when the
	// epoch began).
	lost   context.Context
	cancel context.CancelFunc
	// back is closed when the next epoch has begun, or nc is closed.
	back chan struct{}
	// reconnects is nats.go's count when the epoch began: a reconnect
	// whose status events were missed still ends it.
	reconnects uint64
}

func (e *epoch) isLost() bool {
	select {
	case <-e.lost.Done():
		return true
	default:
		return false
	}
}

// connWatch follows a connection's status through nats.go's status
// events, on one goroutine per Client that ends when nc is closed.
type connWatch struct {
	nc  *nats.Conn
	cur atomic.Pointer[epoch]
}

func watchConn(nc *nats.Conn) *connWatch {
	w := &connWatch{nc: nc}
	w.cur.Store(w.newEpoch())
	// Listen first, then read the state: a change in between is both
	// seen by sync and queued as an event.
	ch := nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	if w.sync() {
		nc.RemoveStatusListener(ch)
		return w
	}
	go func() {
		defer nc.RemoveStatusListener(ch)
		// An event only wakes the watch: sync reads the state itself, so
		// an event dropped from a full channel loses nothing.
		for range ch {
			if w.sync() {
				return
			}
		}
	}()
	return w
}

func (w *connWatch) newEpoch() *epoch {
	ctx, cancel := context.WithCancel(context.Background())
	e := &epoch{lost: ctx, cancel: cancel, back: make(chan struct{}), reconnects: w.nc.Stats().Reconnects}
	if !w.nc.IsConnected() {
		cancel()
	}
	return e
}

// current is the epoch calls are sent in now.
func (w *connWatch) current() *epoch { return w.cur.Load() }

// await waits until the epoch after e has begun (or nc is closed) and
// returns the current one; it returns at once when ctx ends.
func (w *connWatch) await(ctx context.Context, e *epoch) *epoch {
	select {
	case <-e.back:
	case <-ctx.Done():
	}
	return w.current()
}

// sync brings the epochs in line with the connection's status, and
// reports whether nc is closed. Only watchConn and its goroutine call it.
func (w *connWatch) sync() (closed bool) {
	e := w.cur.Load()
	switch w.nc.Status() {
	case nats.CLOSED:
		e.cancel()
		close(e.back)
		return true
	case nats.CONNECTED:
		if e.isLost() || w.nc.Stats().Reconnects != e.reconnects {
			e.cancel()
			w.cur.Store(w.newEpoch())
			close(e.back) // after the Store: a waiter wakes to the new epoch
		}
	case nats.DRAINING_SUBS, nats.DRAINING_PUBS:
		// Still delivering replies; CLOSED follows.
	default:
		e.cancel()
	}
	return false
}
