// Package httpfront serves a resolver over HTTP, for the policy engines
// that do not speak NATS: a plain JSON API (GET|HEAD|POST /v1/<function>)
// for Kyverno's apiCall, curl and scripts, and Gatekeeper's external data
// provider protocol (POST /gatekeeper/v1/<function>). Like the NATS
// front, it is a thin adapter: every answer is the resolver's. What it
// adds is its own bulkhead: a budget of resolutions in flight, a share of
// it per Gatekeeper batch, and a byte budget per reply, so that no HTTP
// caller can take the capacity the NATS front shares.
package httpfront

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// Resolver answers requests; *resolve.Resolver implements it. Lookup
// answers what needs no waiting (a memory hit, a request that does not
// decode) without taking a place in the front's budget; only a Miss goes
// on to Resolve, and counts.
type Resolver interface {
	// Key is the cache key req's answer is kept under, or req's 400:
	// the keys of a batch that name one entry are resolved once.
	Key(req resolve.Request) (string, error)
	Lookup(req resolve.Request) (resolve.Answer, *resolve.Miss, error)
	Resolve(ctx context.Context, m *resolve.Miss) (resolve.Answer, error)
}

// Handler serves the HTTP APIs. Create it with New.
type Handler struct {
	res        Resolver
	timeout    time.Duration
	maxKeys    int
	batchShare int
	maxReply   int
	inflight   *budget
	mux        *http.ServeMux
	observer   resolve.Observer
	tp         trace.TracerProvider // nil: not traced
	serve      http.Handler         // mux, traced or not
}

// Defaults of the options.
const (
	DefaultTimeout          = 2 * time.Second
	DefaultMaxKeys          = 1024
	DefaultMaxInFlight      = 256
	DefaultBatchConcurrency = 32
	DefaultMaxReplyBytes    = 8 << 20
)

// Option configures a Handler.
type Option func(*Handler)

// WithTimeout bounds a Gatekeeper batch (default 2 s, --http-timeout):
// keys still unresolved then get a 504 item; the resolutions already
// started go on, fill the cache, and keep their place in the budget
// until they end.
func WithTimeout(d time.Duration) Option { return func(h *Handler) { h.timeout = d } }

// WithMaxKeys bounds the keys of one Gatekeeper request (default 1024,
// --http-max-keys); more is a systemError.
func WithMaxKeys(n int) Option { return func(h *Handler) { h.maxKeys = max(n, 1) } }

// WithMaxInFlight is the front's budget (default 256,
// --http-max-inflight): the resolutions it has started beyond the memory
// tier and that have not ended, whether their caller still waits or not.
// Past it a plain request is a 503, and a batch's key a 503 item, at
// once: the front never queues without bound in front of the resolver,
// whose --max-pending the NATS front shares.
func WithMaxInFlight(n int) Option { return func(h *Handler) { h.inflight = newBudget(max(n, 1)) } }

// WithBatchConcurrency is one batch's share of that budget (default 32,
// --http-batch-concurrency): the distinct cache entries it resolves at a
// time. A batch of many keys takes longer, not more of the budget, so
// that several callers share it.
func WithBatchConcurrency(n int) Option { return func(h *Handler) { h.batchShare = max(n, 1) } }

// WithMaxReplyBytes bounds a Gatekeeper reply (default 8 MiB,
// --http-max-reply-bytes, well under the Helm chart's 256 Mi memory
// limit): a value that would take the reply past it is answered with a
// 413 item instead. Items that carry an error are always kept, each its
// key and one line of at most 1 KiB, so a reply is at most the budget
// plus those. Items are written as they are ready, in request order; a
// value counts against the budget as soon as its answer comes in, while
// it waits its turn, so a batch never holds more than the budget (and
// which keys get the 413 follows the order the answers came in).
func WithMaxReplyBytes(n int) Option { return func(h *Handler) { h.maxReply = max(n, 1) } }

// WithObserver is told the outcome of every answer and every item, for
// metrics.
func WithObserver(o resolve.Observer) Option { return func(h *Handler) { h.observer = o } }

type nopObserver struct{}

func (nopObserver) Request(contract.Function, int, contract.Outcome, time.Duration) {}

// New returns a Handler answering with res.
func New(res Resolver, opts ...Option) *Handler {
	h := &Handler{
		res: res, timeout: DefaultTimeout, maxKeys: DefaultMaxKeys, batchShare: DefaultBatchConcurrency,
		maxReply: DefaultMaxReplyBytes, inflight: newBudget(DefaultMaxInFlight), observer: nopObserver{},
	}
	for _, o := range opts {
		o(h)
	}
	h.mux = http.NewServeMux()
	// A GET pattern serves HEAD too.
	h.mux.HandleFunc("GET /v1/{function}", h.plain)
	h.mux.HandleFunc("POST /v1/{function}", h.plain)
	h.mux.HandleFunc("POST /gatekeeper/v1/{function}", h.gatekeeper)
	h.serve = h.traced(h.mux)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.serve.ServeHTTP(w, r) }

// InFlight is the number of resolutions the front has started and that
// have not ended, including those whose caller was answered at the
// timeout: its part of the resolver's load, for metrics.
func (h *Handler) InFlight() int { return h.inflight.used() }

func function(name string) (contract.Function, bool) {
	return contract.ParseOperation("v1/" + name)
}

// detach keeps what a request started running after the request ends:
// the resolver bounds a resolution by its own --lock-wait and
// --fetch-timeout, and the budget is released only when it returns.
func detach(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }
