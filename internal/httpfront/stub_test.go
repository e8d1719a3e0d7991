package httpfront_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/httpfront"
	"github.com/regcap/regcap/internal/resolve"
)

// stub is a resolver with no cache, registry or network: answers are set
// per image, and Resolve can be held. Its cache key normalises spellings
// the way the real one does for the cases the tests use: aliases set
// with same, and a tag before @sha256: dropped.
type stub struct {
	mu      sync.Mutex
	answers map[string]stubAnswer // by normalised image
	alias   map[string]string
	holds   map[string]chan struct{}
	calls   map[string]int  // Resolve calls per cache key
	ctxErrs []error         // the context's error when each Resolve ended
	last    resolve.Request // the last request looked up

	running, peak atomic.Int64 // Resolve calls running, and the most at once
	started       chan string  // each Resolve's image, as it starts
}

type stubAnswer struct {
	resolve.Answer
	err    error
	memory bool // answered by Lookup: a memory hit
}

func newStub() *stub {
	return &stub{answers: map[string]stubAnswer{}, alias: map[string]string{}, holds: map[string]chan struct{}{},
		calls: map[string]int{}, started: make(chan string, 4096)}
}

// answer sets what image is answered: body with outcome, or err.
func (s *stub) answer(image string, body string, outcome contract.Outcome) *stub {
	return s.set(image, stubAnswer{Answer: resolve.Answer{Body: []byte(body), Outcome: outcome}})
}

func (s *stub) fail(image string, err error) *stub { return s.set(image, stubAnswer{err: err}) }

func (s *stub) set(image string, a stubAnswer) *stub {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answers[image] = a
	return s
}

// same makes spellings name the cache entry of image.
func (s *stub) same(image string, spellings ...string) *stub {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range spellings {
		s.alias[sp] = image
	}
	return s
}

// hold makes Resolve of image wait until the returned func is called,
// or the test ends.
func (s *stub) hold(t testing.TB, image string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.holds[image] = ch
	s.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

func (s *stub) image(req resolve.Request) (string, error) {
	var img string
	if json.Unmarshal(req.Payload, &img) != nil || img == "" || strings.ContainsAny(img, " \t") {
		return "", contract.Errorf(400, "%q: invalid reference", req.Payload)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.alias[img]; ok {
		return a, nil
	}
	if at := strings.IndexByte(img, '@'); at >= 0 {
		name := img[:at]
		if c := strings.LastIndexByte(name, ':'); c > strings.LastIndexByte(name, '/') {
			name = name[:c]
		}
		return name + img[at:], nil
	}
	return img, nil
}

func (s *stub) Key(req resolve.Request) (string, error) {
	img, err := s.image(req)
	if err != nil {
		return "", err
	}
	if req.Function == contract.OCIManifestConfig && req.Platform != "" {
		return req.Function.Name() + ":" + req.Platform + ":" + img, nil
	}
	return req.Function.Name() + ":" + img, nil
}

func (s *stub) Lookup(req resolve.Request) (resolve.Answer, *resolve.Miss, error) {
	s.mu.Lock()
	s.last = req
	s.mu.Unlock()
	img, err := s.image(req)
	if err != nil {
		return resolve.Answer{}, nil, err
	}
	s.mu.Lock()
	a, ok := s.answers[img]
	s.mu.Unlock()
	if ok && a.memory {
		return a.Answer, nil, a.err
	}
	return resolve.Answer{}, &resolve.Miss{Request: req}, nil
}

func (s *stub) Resolve(ctx context.Context, m *resolve.Miss) (resolve.Answer, error) {
	img, err := s.image(m.Request)
	if err != nil {
		return resolve.Answer{}, err
	}
	key, _ := s.Key(m.Request)
	for n := s.running.Add(1); ; {
		if p := s.peak.Load(); n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	defer s.running.Add(-1)
	s.mu.Lock()
	s.calls[key]++
	a, ok := s.answers[img]
	hold := s.holds[img]
	s.mu.Unlock()
	select {
	case s.started <- img:
	default: // nobody watching: benchmarks
	}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
		}
	}
	s.mu.Lock()
	s.ctxErrs = append(s.ctxErrs, ctx.Err())
	s.mu.Unlock()
	if !ok {
		return resolve.Answer{}, contract.Errorf(404, "%s: manifest unknown", img)
	}
	return a.Answer, a.err
}

func (s *stub) lastRequest() resolve.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// resolutions is the number of Resolve calls for a cache key.
func (s *stub) resolutions(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[key]
}

// cancelled counts the Resolve calls whose context had ended.
func (s *stub) cancelled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, err := range s.ctxErrs {
		if err != nil {
			n++
		}
	}
	return n
}

// serve starts h on a loopback listener.
func serve(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// start serves a Handler over res with opts.
func start(t testing.TB, res httpfront.Resolver, opts ...httpfront.Option) (*httpfront.Handler, *httptest.Server) {
	t.Helper()
	h := httpfront.New(res, opts...)
	return h, serve(t, h)
}

// discard is a ResponseWriter that keeps only the status and the size of
// the body, for tests and benchmarks that measure the front alone.
type discard struct {
	header http.Header
	code   int
	n      int
}

func (d *discard) Header() http.Header {
	if d.header == nil {
		d.header = http.Header{}
	}
	return d.header
}
func (d *discard) Write(p []byte) (int, error) { d.n += len(p); return len(p), nil }
func (d *discard) WriteHeader(code int)        { d.code = code }
