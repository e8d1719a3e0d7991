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
	"github.com/regcap/regcap/internal/testenv"
)

// TestShutdownAnswersDrainedRequests: Shutdown takes no new request but
// answers every one it took: those resolving on a goroutine, and those
// still queued in the client behind a busy callback. It returns once the
// last is answered, having cut none short.
func TestShutdownAnswersDrainedRequests(t *testing.T) {
	inLookup, releaseLookup, releaseResolve := newLatch(), newLatch(), newLatch()
	res := &stub{
		lookup: func(req resolve.Request) (resolve.Answer, *resolve.Miss, error) {
			if string(req.Payload) == "busy" {
				// Holds the callback: the requests behind it wait in the
				// subscription's queue.
				inLookup.open()
				<-releaseLookup.ch
			}
			return resolve.Answer{}, &resolve.Miss{Request: req}, nil
		},
		resolve: func(_ context.Context, m *resolve.Miss) (resolve.Answer, error) {
			<-releaseResolve.ch
			return resolve.Answer{Body: m.Request.Payload, Outcome: contract.Miss}, nil
		},
	}
	f := startFront(t, res)
	openAtEnd(t, releaseLookup, releaseResolve)
	// Two resolving on goroutines, one in the callback, three queued.
	var replies []<-chan *nats.Msg
	for i := range 2 {
		replies = append(replies, f.askAsync(t, contract.OCIManifest, []byte(fmt.Sprint("resolving ", i))))
	}
	replies = append(replies, f.askAsync(t, contract.OCIManifest, []byte("busy")))
	<-inLookup.ch
	for i := range 3 {
		replies = append(replies, f.askAsync(t, contract.OCIManifest, []byte(fmt.Sprint("queued ", i))))
	}

	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(context.Background()) }()
	notYet := func(what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned (%v) %s", err, what)
		case <-time.After(200 * time.Millisecond):
		}
	}
	notYet("with a callback running and requests queued behind it")
	releaseLookup.open()
	testenv.Eventually(t, "every request resolving", func() bool { _, r := res.asked(); return len(r) == 6 })
	notYet("with requests resolving")
	releaseResolve.open()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// The worker closes its connection once Shutdown returns: every
	// reply must be out by then.
	f.srvNC.Close()
	for i, ch := range replies {
		r := reply(t, ch)
		if r.Header.Get(contract.HeaderCache) != string(contract.Miss) {
			t.Errorf("request %d: %v, want its answer", i, r.Header)
		}
	}
	if n := f.srv.Cancelled(); n != 0 {
		t.Errorf("Cancelled() = %d after a complete drain", n)
	}
	if lookups, _ := res.asked(); len(lookups) != 6 {
		t.Errorf("%d Lookups, want 6", len(lookups))
	}
	// Drained: nobody takes requests any more.
	if _, err := f.nc.Request(contract.OCIManifest.Subject(contract.DefaultSubjectPrefix), []byte(`"x"`), 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("a request after Shutdown: %v, want no responders", err)
	}
}
