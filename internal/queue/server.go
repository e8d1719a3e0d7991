// Package queue serves a resolver on NATS: queue subscriptions on the
// three capability subjects in the fleet's queue group, a memory hit
// answered inside the callback, everything else handed to a goroutine,
// and replies in the NATS service-framework convention. It keeps the
// subscriptions, the drain and the shutdown; the answers are the
// resolver's, and it talks to nothing else.
package queue

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// Resolver answers requests; *resolve.Resolver implements it.
type Resolver interface {
	// Lookup answers without blocking, or returns the miss that Resolve
	// goes on with.
	Lookup(req resolve.Request) (resolve.Answer, *resolve.Miss, error)
	Resolve(ctx context.Context, m *resolve.Miss) (resolve.Answer, error)
}

type nopObserver struct{}

func (nopObserver) Request(contract.Function, int, contract.Outcome, time.Duration) {}

// Server answers capability requests on NATS. Create it with New, then
// Start.
type Server struct {
	nc  *nats.Conn
	res Resolver
	log *zap.Logger
	obs resolve.Observer

	// tracer is nil when tracing is off: the hit path then never
	// touches a header for it.
	tracer trace.Tracer
	prop   propagation.TextMapPropagator

	prefix     string
	queueGroup string
	// cacheHeaders are the Regcap-Cache values, one per outcome, made
	// once and shared by every reply (nats.go only reads them).
	cacheHeaders map[contract.Outcome][]string

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
func WithObserver(o resolve.Observer) Option { return func(s *Server) { s.obs = o } }

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
	s.cacheHeaders = map[contract.Outcome][]string{}
	for _, o := range []contract.Outcome{contract.Hit, contract.Miss, contract.Shared, contract.Stale} {
		s.cacheHeaders[o] = []string{string(o)}
	}
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
