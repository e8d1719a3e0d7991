package queue_test

import (
	"context"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// stub is a resolver whose answers the test sets, and which records what
// the front asked it: the front's tests need no cache and no registry.
type stub struct {
	// lookup answers Lookup (default: a miss).
	lookup func(resolve.Request) (resolve.Answer, *resolve.Miss, error)
	// resolve answers Resolve (default: a miss fetched with body "{}").
	resolve func(context.Context, *resolve.Miss) (resolve.Answer, error)

	mu       sync.Mutex
	lookups  []resolve.Request
	resolves []resolve.Request
}

func (s *stub) Lookup(req resolve.Request) (resolve.Answer, *resolve.Miss, error) {
	s.mu.Lock()
	s.lookups = append(s.lookups, req)
	s.mu.Unlock()
	if s.lookup == nil {
		return resolve.Answer{}, &resolve.Miss{Request: req}, nil
	}
	return s.lookup(req)
}

func (s *stub) Resolve(ctx context.Context, m *resolve.Miss) (resolve.Answer, error) {
	s.mu.Lock()
	s.resolves = append(s.resolves, m.Request)
	s.mu.Unlock()
	if s.resolve == nil {
		return resolve.Answer{Body: []byte("{}"), Outcome: contract.Miss}, nil
	}
	return s.resolve(ctx, m)
}

// asked returns copies of the requests Lookup and Resolve were given.
func (s *stub) asked() (lookups, resolves []resolve.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]resolve.Request(nil), s.lookups...), append([]resolve.Request(nil), s.resolves...)
}

// hit is a Lookup that answers every request from memory with a.
func hit(a resolve.Answer) func(resolve.Request) (resolve.Answer, *resolve.Miss, error) {
	return func(resolve.Request) (resolve.Answer, *resolve.Miss, error) { return a, nil, nil }
}

// latch is a channel closed once, by open, that stubs block on.
type latch struct {
	ch   chan struct{}
	once sync.Once
}

func newLatch() *latch { return &latch{ch: make(chan struct{})} }

func (l *latch) open() { l.once.Do(func() { close(l.ch) }) }

// openAtEnd opens the latches when the test ends. Called after
// startFront, it runs before the front's Shutdown (cleanups run last
// first): a failed test leaves no stub blocked for Shutdown to wait on.
func openAtEnd(t *testing.T, ls ...*latch) {
	t.Cleanup(func() {
		for _, l := range ls {
			l.open()
		}
	})
}

// observed is an Observer that records what it is told.
type observed struct {
	mu    sync.Mutex
	calls []observation
	// hold, if set, is called on each observation, where the front
	// makes it: a test may block there.
	hold func()
}

type observation struct {
	fn      contract.Function
	code    int
	outcome contract.Outcome
}

func (o *observed) Request(fn contract.Function, code int, outcome contract.Outcome, _ time.Duration) {
	if o.hold != nil {
		o.hold()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, observation{fn, code, outcome})
}

// wait returns the first n observations once there are n: the front tells
// the observer after it sent the reply, so the caller may be ahead.
func (o *observed) wait(t *testing.T, n int) []observation {
	t.Helper()
	var got []observation
	testenv.Eventually(t, "the observer told", func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		got = append([]observation(nil), o.calls...)
		return len(got) >= n
	})
	return got[:n]
}

// all returns every observation so far.
func (o *observed) all() []observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]observation(nil), o.calls...)
}

// front is a queue.Server over a stub, on an embedded NATS server, and a
// connection to ask it on.
type front struct {
	ns    *natsserver.Server
	srv   *queue.Server
	srvNC *nats.Conn // the front's connection
	res   *stub
	obs   *observed
	nc    *nats.Conn // the caller's connection
}

// startFront serves res on a NATS server of its own.
func startFront(t *testing.T, res *stub, opts ...queue.Option) *front {
	t.Helper()
	return startFrontOn(t, testenv.StartNATS(t), res, opts...)
}

// startFrontOn serves res on ns, with an observer, stopped at cleanup.
func startFrontOn(t *testing.T, ns *natsserver.Server, res *stub, opts ...queue.Option) *front {
	t.Helper()
	f := &front{ns: ns, res: res, obs: &observed{}, srvNC: testenv.Connect(t, ns.ClientURL())}
	f.srv = queue.New(f.srvNC, res, append([]queue.Option{queue.WithObserver(f.obs)}, opts...)...)
	testenv.Must(t, f.srv.Start(), "starting the front")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = f.srv.Shutdown(ctx)
	})
	f.nc = testenv.Connect(t, ns.ClientURL())
	return f
}

// ask sends a request for fn and returns the reply.
func (f *front) ask(t *testing.T, fn contract.Function, payload []byte, header nats.Header) *nats.Msg {
	t.Helper()
	m := nats.NewMsg(fn.Subject(contract.DefaultSubjectPrefix))
	m.Data = payload
	for k, vs := range header {
		m.Header[k] = vs
	}
	r, err := f.nc.RequestMsg(m, 10*time.Second)
	testenv.Must(t, err, "asking %s", fn)
	return r
}

// askAsync sends a request for fn and returns where its reply will come.
func (f *front) askAsync(t *testing.T, fn contract.Function, payload []byte) <-chan *nats.Msg {
	t.Helper()
	out := make(chan *nats.Msg, 1)
	sub, err := f.nc.SubscribeSync(nats.NewInbox())
	testenv.Must(t, err, "reply subscription")
	testenv.Must(t, f.nc.PublishRequest(fn.Subject(contract.DefaultSubjectPrefix), sub.Subject, payload), "publishing")
	testenv.Must(t, f.nc.Flush(), "flush")
	go func() {
		defer func() { _ = sub.Unsubscribe() }()
		r, err := sub.NextMsg(20 * time.Second)
		if err != nil {
			r = nil
		}
		out <- r
	}()
	return out
}

// reply waits for a reply from askAsync.
func reply(t *testing.T, ch <-chan *nats.Msg) *nats.Msg {
	t.Helper()
	r := <-ch
	if r == nil {
		t.Fatal("no reply")
	}
	return r
}
