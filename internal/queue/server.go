// Package queue serves a resolver on NATS: queue subscriptions on the
// three capability subjects, a memory hit answered inside the callback,
// everything else handed to a goroutine, and replies in the NATS
// service-framework convention. It keeps the subscriptions, the drain and
// the shutdown; the answers are the resolver's.
package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// Resolver answers requests; *resolve.Resolver implements it.
type Resolver interface {
	// Lookup answers without blocking, or says that Answer must.
	Lookup(req resolve.Request) (resolve.Answer, bool, error)
	Answer(ctx context.Context, req resolve.Request) (resolve.Answer, error)
}

// Observer is told the outcome of every request, for metrics. code is 0
// on success; outcome is "" for errors.
type Observer interface {
	Request(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration)
}

type nopObserver struct{}

func (nopObserver) Request(contract.Function, int, contract.Outcome, time.Duration) {}

// Server answers capability requests on NATS. Create it with New, then
// Start.
type Server struct {
	nc  *nats.Conn
	res Resolver
	log *zap.Logger
	obs Observer

	prefix     string
	queueGroup string

	// repliedOffline is set when a reply went to the reconnect buffer.
	repliedOffline atomic.Bool

	life      context.Context // cancelled only by a hard stop
	hardStop  context.CancelFunc
	inflight  sync.WaitGroup
	busy      atomic.Int64 // requests handed to a goroutine and not answered
	callbacks atomic.Int64 // subscription callbacks running
	cancelled atomic.Int64 // of those, how many the hard stop cut short
	subs      []*nats.Subscription
}

// Option configures a Server.
type Option func(*Server)

// WithSubjectPrefix sets the subject prefix (default "kubewarden").
func WithSubjectPrefix(p string) Option { return func(s *Server) { s.prefix = p } }

// WithQueueGroup sets the queue group (default "regcap").
func WithQueueGroup(g string) Option { return func(s *Server) { s.queueGroup = g } }

// WithLogger sets the logger.
func WithLogger(l *zap.Logger) Option { return func(s *Server) { s.log = l } }

// WithObserver sets the metrics observer.
func WithObserver(o Observer) Option { return func(s *Server) { s.obs = o } }

// New returns a Server that will answer on nc with res.
func New(nc *nats.Conn, res Resolver, opts ...Option) *Server {
	s := &Server{
		nc: nc, res: res,
		log: zap.NewNop(), obs: nopObserver{},
		prefix: contract.DefaultSubjectPrefix, queueGroup: contract.DefaultQueueGroup,
	}
	for _, o := range opts {
		o(s)
	}
	s.life, s.hardStop = resolve.ShuttingDown()
	return s
}

// Start subscribes to the three subjects.
func (s *Server) Start() error {
	for _, fn := range contract.Functions() {
		sub, err := s.nc.QueueSubscribe(fn.Subject(s.prefix), s.queueGroup, s.handler(fn))
		if err != nil {
			s.unsubscribe()
			return fmt.Errorf("subscribing to %s: %w", fn.Subject(s.prefix), err)
		}
		// Bursts queue in the client, not at the server: the callback is
		// fast, and the resolver's max-pending is what bounds real work.
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			s.unsubscribe()
			return err
		}
		s.subs = append(s.subs, sub)
	}
	// Without a connection yet (RetryOnFailedConnect), the subscriptions
	// are sent when it comes.
	if s.nc.IsConnected() {
		if err := s.nc.Flush(); err != nil {
			s.unsubscribe()
			return fmt.Errorf("subscribing: %w", err)
		}
	}
	return nil
}

func (s *Server) unsubscribe() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
}

// Subjects lists the subjects served.
func (s *Server) Subjects() []string {
	var out []string
	for _, fn := range contract.Functions() {
		out = append(out, fn.Subject(s.prefix))
	}
	return out
}

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
		a, ok, err := s.res.Lookup(req)
		if err != nil || ok {
			s.reply(m, fn, a, err, start)
			return
		}
		s.inflight.Add(1)
		s.busy.Add(1)
		go func() {
			defer s.inflight.Done()
			defer s.busy.Add(-1)
			a, err := s.res.Answer(s.life, req)
			s.reply(m, fn, a, err, start)
		}()
	}
}

// reply sends an answer, or an error in the NATS service-framework
// convention: the code and message in headers, an empty body.
func (s *Server) reply(m *nats.Msg, fn contract.Function, a resolve.Answer, err error, start time.Time) {
	r := nats.NewMsg(m.Reply)
	code := 0
	if err != nil {
		ce := contract.AsError(err)
		code, a.Outcome = ce.Code, ""
		r.Header.Set(contract.HeaderErrorCode, strconv.Itoa(ce.Code))
		r.Header.Set(contract.HeaderError, headerSafe(ce.Message))
		if ce.RetryAfter != "" {
			r.Header.Set(contract.HeaderRetryAfter, headerSafe(ce.RetryAfter))
		}
	} else {
		r.Header.Set(contract.HeaderCache, string(a.Outcome))
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
		s.log.Warn("reply not sent", zap.String("function", string(fn)), zap.Error(err))
	}
	s.obs.Request(fn, code, a.Outcome, time.Since(start))
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

// headerSafe keeps a header value on one line.
func headerSafe(v string) string {
	b := []byte(v)
	for i, c := range b {
		if c == '\r' || c == '\n' || c < 0x20 && c != '\t' {
			b[i] = ' '
		}
	}
	return string(b)
}
