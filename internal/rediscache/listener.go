package rediscache

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// startListener starts the one pub/sub subscription the first time a
// lock is asked for; Close stops it.
func (l *fleetLock) startListener() {
	l.once.Do(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.closed {
			return
		}
		ctx, stop := context.WithCancel(context.Background())
		l.stop, l.done, l.ready = stop, make(chan struct{}), make(chan struct{})
		go l.listen(ctx, l.ready, l.done)
	})
	// The first lock waits for the subscription, or a waiter registered
	// now would miss the answer and fall back to its periodic check.
	if l.ready != nil {
		select {
		case <-l.ready:
		case <-time.After(l.c.health.opTimeout):
		}
	}
}

func (l *fleetLock) listen(ctx context.Context, ready, done chan<- struct{}) {
	defer close(done)
	ps := l.c.rdb.PSubscribe(ctx, donePrefix+"*")
	defer ps.Close()
	rctx, cancel := l.c.health.op(ctx)
	if _, err := ps.Receive(rctx); err != nil {
		// In a Cluster, the pattern's slot names the node subscribed to.
		l.c.health.failed(ctx, donePrefix+"*", "subscribe", err)
	}
	cancel()
	close(ready)
	// go-redis re-subscribes after a reconnect; notices sent meanwhile
	// are lost, which the waiters' periodic check covers.
	ch := ps.Channel(redis.WithChannelHealthCheckInterval(5 * time.Second))
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			n, err := openNotice(m.Channel, m.Payload, l.c.macKey, l.c.now(), l.c.maxValue())
			if err != nil {
				// A waiter that hears nothing goes on waiting, then
				// fetches itself (see Wait).
				l.ignored(m.Channel, err)
				continue
			}
			l.deliver(keyOfChannel(m.Channel), n)
		}
	}
}

// ignored reports a notice refused by openNotice: counted every time,
// logged once per reason in a while (anyone who can publish could
// otherwise flood the log).
func (l *fleetLock) ignored(channel string, err error) {
	var r *rejection
	if !errors.As(err, &r) {
		r = &rejection{noticeMalformed, err.Error()}
	}
	l.c.reject(r.reason)
	if l.c.logs.first("notice:" + r.reason) {
		l.c.log.Warn("ignoring a fleet-lock notice: its waiters go on waiting, then fetch themselves (logged once per reason every 10m)",
			zap.String("channel", logKey(channel)), zap.String("reason", r.reason), zap.String("detail", r.detail))
	}
}

// close stops the listener.
func (l *fleetLock) close() {
	l.mu.Lock()
	l.closed = true
	stop, done := l.stop, l.done
	l.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}
