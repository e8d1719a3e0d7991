package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
)

// The relay is the cold path's floor over NATS: a responder, on the echo's
// connection, that answers each request with one HEAD (as HeadFloor sends
// it) for the reference in its payload, each in a goroutine of its own as
// a worker hands misses on. It has no cache, no lock, no checks: what any
// NATS service that asks the registry once per request costs on this
// machine. regcap's ratio to it is regcap's own cost on a miss; the
// relay's ratio to the raw HEAD is the NATS hop's.
type relay struct {
	e       *Echo
	subject string
	sub     *nats.Subscription
}

// relayError starts a relay reply that is an error, not a digest.
const relayError = "error: "

func startRelay(e *Echo, conc int) (*relay, error) {
	h := newHeader(conc)
	timeout := e.timeout()
	subject := nats.NewInbox() + ".relay"
	sub, err := e.Responder.Subscribe(subject, func(m *nats.Msg) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			url, err := headURL(string(m.Data))
			var d string
			if err == nil {
				d, err = h.head(ctx, url)
			}
			if err != nil {
				d = relayError + err.Error()
			}
			_ = m.Respond([]byte(d))
		}()
	})
	if err != nil {
		return nil, fmt.Errorf("starting the relay responder: %w", err)
	}
	if err := e.Responder.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("starting the relay responder: %w", err)
	}
	return &relay{e: e, subject: subject, sub: sub}, nil
}

// call requests refs[seq] of the relay.
func (r *relay) call(refs []string) Call {
	timeout := r.e.timeout()
	return func(ctx context.Context, seq int) (contract.Outcome, error) {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		m, err := r.e.Requester.RequestWithContext(ctx, r.subject, []byte(refs[seq%len(refs)]))
		if err != nil {
			return "", err
		}
		if msg, failed := strings.CutPrefix(string(m.Data), relayError); failed {
			return "", errors.New(msg)
		}
		return "", nil
	}
}

func (r *relay) stop() { _ = r.sub.Unsubscribe() }
