package queue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// TestShutdownHardStopAnswers503: when Shutdown's context ends first, the
// requests still resolving are cut short with the shutting-down cause, so
// that the resolver answers them 503 (not 504: they did not give up), and
// each is answered before Shutdown returns the context's error, with the
// count of those it cancelled.
func TestShutdownHardStopAnswers503(t *testing.T) {
	// The cause resolve gives a shutdown, as the resolver reads it.
	ref, cancel := resolve.ShuttingDown()
	cancel()
	shutdownCause := context.Cause(ref)

	const n = 3
	started := make(chan struct{}, n)
	res := &stub{resolve: func(ctx context.Context, m *resolve.Miss) (resolve.Answer, error) {
		started <- struct{}{}
		<-ctx.Done()
		// What *resolve.Resolver answers a caller cut short.
		if errors.Is(context.Cause(ctx), shutdownCause) {
			return resolve.Answer{}, contract.Errorf(503, "%s: worker shutting down", m.Request.Payload)
		}
		return resolve.Answer{}, contract.Errorf(504, "%s: not answered before the caller gave up", m.Request.Payload)
	}}
	f := startFront(t, res)
	var replies []<-chan *nats.Msg
	for i := range n {
		replies = append(replies, f.askAsync(t, contract.ManifestDigest, []byte(fmt.Sprint(i))))
	}
	for range n {
		<-started
	}
	ctx, stop := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer stop()
	if err := f.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want the context's error", err)
	}
	if got := f.srv.Cancelled(); got != n {
		t.Errorf("Cancelled() = %d, want %d", got, n)
	}
	// Sent and flushed before Shutdown returned.
	for i, ch := range replies {
		select {
		case r := <-ch:
			if r == nil || r.Header.Get(contract.HeaderErrorCode) != "503" {
				t.Errorf("request %d: %v, want 503", i, r)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("request %d not answered", i)
		}
	}
	for _, o := range f.obs.wait(t, n) {
		if o != (observation{contract.ManifestDigest, 503, ""}) {
			t.Errorf("observer told %+v, want 503", o)
		}
	}
}
