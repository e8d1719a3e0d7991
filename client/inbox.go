package client

import (
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
)

// callBuffer bounds what one call keeps of the messages sent to it: the
// acknowledgements and answers of its (at most a few) attempts. Anything
// more is dropped: a call takes the first answer.
const callBuffer = 4

// replyMux is a Client's one subscription to its own inbox, shared by
// every call (as nats.go's request mux is): a call's reply and
// acknowledgement subjects live under it, so the answer to any attempt
// of the call, even one sent before a retry, is still the call's.
type replyMux struct {
	nc    *nats.Conn
	mu    sync.Mutex
	sub   *nats.Subscription // nil until the first call
	base  string             // "<inbox>."
	next  uint64
	calls map[string]*pending
}

// pending is one call waiting on the mux.
type pending struct {
	token string
	reply string // the acknowledgement's subject is reply+contract.AckSuffix
	ch    chan *nats.Msg
	// acked: a worker acknowledged one of the call's attempts. Only the
	// call's own goroutine reads and writes it.
	acked bool
}

// register starts waiting for a call's messages; the subscription is
// made on the first call, and lasts as long as nc.
func (x *replyMux) register() (*pending, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.sub == nil {
		base := x.nc.NewInbox() + "."
		sub, err := x.nc.Subscribe(base+">", func(m *nats.Msg) { x.dispatch(base, m) })
		if err != nil {
			return nil, err
		}
		x.sub, x.base, x.calls = sub, base, make(map[string]*pending)
	}
	x.next++
	tok := strconv.FormatUint(x.next, 36)
	// The reply subject's last token asks workers for an acknowledgement
	// (contract.AckReplyToken): no header to encode or decode.
	p := &pending{token: tok, reply: x.base + tok + "." + contract.AckReplyToken, ch: make(chan *nats.Msg, callBuffer)}
	x.calls[tok] = p
	return p, nil
}

// unregister ends a call: later messages for it are dropped.
func (x *replyMux) unregister(p *pending) {
	x.mu.Lock()
	delete(x.calls, p.token)
	x.mu.Unlock()
}

func (x *replyMux) dispatch(base string, m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, base)
	if !ok {
		return
	}
	tok, _, _ := strings.Cut(rest, ".")
	x.mu.Lock()
	p := x.calls[tok]
	x.mu.Unlock()
	if p == nil {
		return // a call that has ended: a late answer to a retried attempt
	}
	select {
	case p.ch <- m:
	default:
	}
}

// isAck reports whether m is a worker's acknowledgement of the call.
func (p *pending) isAck(m *nats.Msg) bool {
	return len(m.Subject) == len(p.reply)+len(contract.AckSuffix) &&
		m.Subject[:len(p.reply)] == p.reply && m.Subject[len(p.reply):] == contract.AckSuffix
}

// isNoResponders reports whether m is the server's no-responders status
// (nats.go's RequestMsg turns it into nats.ErrNoResponders).
func isNoResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}

// plainReply is p's reply subject without the token that asks for an
// acknowledgement (WithAckTimeout 0).
func (p *pending) plainReply() string {
	return strings.TrimSuffix(p.reply, "."+contract.AckReplyToken)
}
