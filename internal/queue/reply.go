package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/telemetry"
	"go.uber.org/zap"
)

// handler answers a memory hit or a bad request inside the callback, and
// hands anything that waits on the network to a goroutine of its own: a
// slow registry or Redis never holds up the answers for other images.
func (s *Server) handler(fn contract.Function) nats.MsgHandler {
	return func(m *nats.Msg) {
		// Counted for Shutdown: a callback running holds a message that
		// the subscription no longer counts as pending.
		s.callbacks.Add(1)
		defer s.callbacks.Add(-1)
		if m.Reply == "" {
			return // a publish, not a request: nobody to answer
		}
		start := time.Now()
		req := resolve.Request{Function: fn, Payload: m.Data}
		if fn == contract.OCIManifestConfig {
			req.Platform = m.Header.Get(contract.HeaderPlatform)
		}
		var sp *frontSpan // nil unless tracing
		if s.tracer != nil {
			sp = s.startSpan(m, fn, req.Platform)
		}
		a, miss, err := s.res.Lookup(req)
		if err != nil || miss == nil {
			s.reply(m, fn, a, err, start, sp)
			return
		}
		// Taken, and not answered at once: a caller that asked is told
		// now, so it does not mistake a slow answer for a lost request.
		switch {
		case askedForAck(m.Reply):
			s.ack(m.Reply, m.Reply+contract.AckSuffix)
		case m.Header != nil:
			if ack := m.Header.Get(contract.HeaderAck); ack != "" {
				s.ack(m.Reply, ack)
			}
		}
		s.inflight.Add(1)
		s.busy.Add(1)
		go func() {
			defer s.inflight.Done()
			defer s.busy.Add(-1)
			a, err := s.res.Resolve(sp.context(s.life), miss)
			s.reply(m, fn, a, err, start, sp)
		}()
	}
}

// askedForAck reports whether reply's last token is
// contract.AckReplyToken.
func askedForAck(reply string) bool {
	return len(reply) > len(contract.AckReplyToken) && reply[len(reply)-len(contract.AckReplyToken)-1] == '.' &&
		reply[len(reply)-len(contract.AckReplyToken):] == contract.AckReplyToken
}

// maxAckSubject bounds the acknowledgement subject a request may name.
const maxAckSubject = 256

// ack publishes the empty acknowledgement of a request with reply
// subject reply to the subject its HeaderAck names. A subject other than
// reply+contract.AckSuffix, or one a publish may not name (a wildcard, a space,
// an empty token, over maxAckSubject bytes), gets no acknowledgement:
// the request is still answered.
func (s *Server) ack(reply, subject string) {
	if reply == "" || subject != reply+contract.AckSuffix || !validAckSubject(subject) {
		return
	}
	if err := s.nc.Publish(subject, nil); err != nil {
		s.log.Debug("acknowledgement not sent", zap.Error(err))
	}
}

func validAckSubject(subject string) bool {
	if len(subject) == 0 || len(subject) > maxAckSubject {
		return false
	}
	tokenStart := true
	for i := 0; i < len(subject); i++ {
		switch c := subject[i]; {
		case c == '.':
			if tokenStart {
				return false // empty token
			}
			tokenStart = true
			continue
		case c <= ' ' || c == 0x7f:
			return false
		case (c == '*' || c == '>') && tokenStart && (i+1 == len(subject) || subject[i+1] == '.'):
			return false // a wildcard token
		}
		tokenStart = false
	}
	return !tokenStart
}

// reply sends an answer, or an error in the NATS service-framework
// convention: the code and message in headers, an empty body.
func (s *Server) reply(m *nats.Msg, fn contract.Function, a resolve.Answer, err error, start time.Time, sp *frontSpan) {
	r := nats.NewMsg(m.Reply)
	code := 0
	if err != nil {
		ce := contract.AsError(err)
		code, a.Outcome = ce.Code, ""
		r.Header.Set(contract.HeaderErrorCode, strconv.Itoa(ce.Code))
		r.Header.Set(contract.HeaderError, contract.Bound(ce.Message))
		if ce.RetryAfter != "" {
			r.Header.Set(contract.HeaderRetryAfter, contract.Bound(ce.RetryAfter))
		}
	} else {
		// One shared value per outcome: a hit allocates no header value.
		r.Header[contract.HeaderCache] = s.outcomeHeader(a.Outcome)
		if a.Outcome == contract.Stale {
			r.Header.Set(contract.HeaderAge, strconv.Itoa(int(a.Age.Seconds())))
		}
		r.Data = a.Body
	}
	// A reply the server would refuse is never dropped: the caller gets
	// a 413 that says so, not a timeout.
	if limit := s.nc.MaxPayload(); limit > 0 && int64(msgSize(r)) > limit {
		r, code, a.Outcome = tooLarge(m.Reply, fn, msgSize(r), limit), 413, ""
	}
	if !s.nc.IsConnected() {
		s.repliedOffline.Store(true)
	}
	err = m.RespondMsg(r)
	if errors.Is(err, nats.ErrMaxPayload) && code != 413 {
		r, code, a.Outcome = tooLarge(m.Reply, fn, msgSize(r), s.nc.MaxPayload()), 413, ""
		err = m.RespondMsg(r)
	}
	if err != nil {
		s.log.Warn("reply not sent", append(telemetry.LogFields(sp.context(context.Background())), zap.String("function", string(fn)), zap.Error(err))...)
	}
	sp.end(code, a.Outcome)
	s.observe(sp, fn, code, a.Outcome, time.Since(start))
}

// msgSize is what a message counts against the server's max_payload:
// its headers, as NATS encodes them, and its body.
func msgSize(m *nats.Msg) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n + len(m.Data)
}

// tooLarge is the 413 error reply for an answer of size bytes that does
// not fit the server's max_payload.
func tooLarge(reply string, fn contract.Function, size int, limit int64) *nats.Msg {
	r := nats.NewMsg(reply)
	r.Header.Set(contract.HeaderErrorCode, "413")
	r.Header.Set(contract.HeaderError, fmt.Sprintf("%s answer of %d bytes is over the NATS server's max_payload of %d bytes: raise max_payload, or lower --max-manifest-size and --max-config-size", fn.Name(), size, limit))
	return r
}

// outcomeHeader is the Regcap-Cache header's value for o.
func (s *Server) outcomeHeader(o contract.Outcome) []string {
	if h, ok := s.cacheHeaders[o]; ok {
		return h
	}
	return []string{string(o)}
}
