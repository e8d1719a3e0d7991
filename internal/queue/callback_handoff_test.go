package queue_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/resolve"
)

// TestHitInCallbackMissOnGoroutine: a memory hit (or a Lookup error) is
// replied inside the subscription's callback, with no hand-off, while a
// miss goes to Resolve on a goroutine of its own, so that a slow fetch
// never holds up the answers queued behind it. A subscription runs its
// callbacks one at a time: a reply held inside the callback holds the
// next message's Lookup, a reply held on a goroutine does not.
func TestHitInCallbackMissOnGoroutine(t *testing.T) {
	for _, tc := range []struct {
		name       string
		payload    string // what the held request asks for
		inCallback bool
	}{
		{"hit", "hit", true},
		{"bad request", "bad", true},
		{"miss", "miss", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			held, release := newLatch(), newLatch()
			res := &stub{
				lookup: func(req resolve.Request) (resolve.Answer, *resolve.Miss, error) {
					switch string(req.Payload) {
					case "hit", "next":
						return resolve.Answer{Body: []byte("{}"), Outcome: contract.Hit}, nil, nil
					case "bad":
						return resolve.Answer{}, nil, contract.Errorf(400, "not a JSON string")
					}
					return resolve.Answer{}, &resolve.Miss{Request: req}, nil
				},
				resolve: func(context.Context, *resolve.Miss) (resolve.Answer, error) {
					return resolve.Answer{Body: []byte("{}"), Outcome: contract.Miss}, nil
				},
			}
			// The front tells the observer once the reply is sent, from
			// where it sent it: hold the first request there.
			var once sync.Once
			obs := &observed{hold: func() { once.Do(func() { held.open(); <-release.ch }) }}
			f := startFront(t, res, queue.WithObserver(obs))
			openAtEnd(t, release)
			heldReply := f.askAsync(t, contract.OCIManifest, []byte(tc.payload))
			<-held.ch
			next := f.askAsync(t, contract.OCIManifest, []byte("next"))
			if tc.inCallback {
				select {
				case r := <-next:
					t.Fatalf("the next request was answered (%v) while the %s's reply was held: that reply was not sent from the callback", r.Header, tc.name)
				case <-time.After(300 * time.Millisecond):
				}
			} else {
				select {
				case r := <-next:
					if r == nil {
						t.Fatal("no reply to the next request")
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("the next request waits on the %s's reply: the miss was resolved in the callback", tc.name)
				}
			}
			release.open()
			reply(t, heldReply)
			if tc.inCallback {
				reply(t, next)
			}
			if _, resolves := res.asked(); (len(resolves) == 1) != (tc.payload == "miss") {
				t.Errorf("Resolve asked %d times for a %s", len(resolves), tc.name)
			}
		})
	}
}
