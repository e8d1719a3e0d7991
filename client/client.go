// Package client calls a regcap fleet over NATS: the three kubewarden/oci
// registry capabilities, as typed calls and as a waPC host-call function
// that Go policy hosts can plug in unchanged.
//
// A call that a NATS node failure may have lost is retried once (see
// Client.Call): all three calls are idempotent, and a worker shares a
// fetch in progress, so the retry of a slow request costs no second
// registry fetch.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/regcap/regcap/contract"
)

// ErrUnreachable wraps failures to reach any worker: no responders, a
// timeout, or a closed connection. Callers may retry these.
var ErrUnreachable = errors.New("regcap fleet unreachable")

// Reply is a successful answer.
type Reply struct {
	Body []byte
	// Cache says where the answer came from: hit, miss, shared or stale.
	Cache contract.Outcome
	// Age is how long ago a stale answer was fetched (Regcap-Age).
	Age time.Duration
}

// Client is safe for concurrent use.
type Client struct {
	nc             *nats.Conn
	prefix         string
	timeout        time.Duration
	attemptTimeout time.Duration
	ackTimeout     time.Duration
	// ackless: the last worker that answered a miss of this client did
	// not acknowledge it (a fleet older than acknowledgements), so an
	// attempt waits the attempt timeout, not the ack timeout, for it.
	ackless atomic.Bool
	mux     *replyMux
	// subjects are the functions' subjects, made once: read-only.
	subjects map[contract.Function]string
	// timers are stopped timers for attempts to re-arm (since Go 1.23 a
	// stopped or reset timer delivers no stale tick).
	timers  sync.Pool
	onRetry func(contract.Function, error)
	conn    *connWatch
	// tracer and prop are nil unless WithTracerProvider.
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

// Option configures a Client.
type Option func(*Client)

// WithSubjectPrefix sets the subject prefix (default "kubewarden").
func WithSubjectPrefix(p string) Option { return func(c *Client) { c.prefix = p } }

// WithTimeout bounds a call whose context has no deadline (default 30s:
// a worker answers within --lock-wait + --fetch-timeout, 20s by default,
// so a slow registry is reported as the worker's 504, not as a timeout).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// DefaultAttemptTimeout is how long one attempt of a call waits for its
// answer once a worker has acknowledged it, before it is sent again (see
// WithAttemptTimeout): longer, with a margin, than a worker's default
// --fetch-timeout (10s), so that a slow registry is asked once.
const DefaultAttemptTimeout = 15 * time.Second

// DefaultAckTimeout is how long an attempt waits for a worker's
// acknowledgement (or its answer) before it is sent again (see
// WithAckTimeout).
const DefaultAckTimeout = time.Second

// WithAttemptTimeout sets how long one attempt waits for its answer
// after a worker acknowledged it, before the call sends the request
// again, once, within what is left of its budget (default
// DefaultAttemptTimeout). Keep it above the fleet's --fetch-timeout: a
// request slower than d is sent again (the retry joins the fetch in
// progress, and the answer to either attempt is the call's). It is also
// how long an attempt waits for a fleet that does not acknowledge
// requests (see WithAckTimeout). A call whose remaining budget is not
// longer than the wait gets one attempt with all of it. Zero or
// negative: no attempt timeout and no early retry.
func WithAttemptTimeout(d time.Duration) Option {
	return func(c *Client) { c.attemptTimeout = d }
}

// WithAckTimeout sets how long an attempt waits for the worker's
// acknowledgement (docs/contract.md, "Acknowledgement") or its answer
// before the call sends the request again, once (default
// DefaultAckTimeout; never longer than the attempt timeout). A request
// lost on a NATS node that died between this client and the worker is
// acknowledged by nobody: this bounds that silence. A worker
// acknowledges a request it cannot answer at once, at once, so a slow
// registry is not a reason to retry; the call then waits up to the
// attempt timeout.
//
// A retry that nobody acknowledges within d either is sent once more.
// A fleet too old to acknowledge: the first slow answer of such a fleet
// is asked for up to three times (the answer to any attempt is the
// call's); once the client has seen a miss answered without an
// acknowledgement, its attempts wait the attempt timeout instead, until
// a worker acknowledges again. Zero or negative: no acknowledgement is
// asked for, and every attempt waits the attempt timeout.
func WithAckTimeout(d time.Duration) Option {
	return func(c *Client) { c.ackTimeout = d }
}

// WithRetryHook calls f before each retry, with the function called and
// the failure of the attempt that is retried; f must not block. Use it
// to count retries.
func WithRetryHook(f func(fn contract.Function, err error)) Option {
	return func(c *Client) { c.onRetry = f }
}

// New returns a Client over nc. It watches nc's connection state, to
// retry at once a call that was in flight when the connection was lost;
// the watch ends when nc is closed.
func New(nc *nats.Conn, opts ...Option) *Client {
	c := &Client{nc: nc, prefix: contract.DefaultSubjectPrefix, timeout: 30 * time.Second, attemptTimeout: DefaultAttemptTimeout, ackTimeout: DefaultAckTimeout}
	for _, o := range opts {
		o(c)
	}
	c.mux = &replyMux{nc: nc}
	c.timers.New = newStoppedTimer
	fns := contract.Functions()
	c.subjects = make(map[contract.Function]string, len(fns))
	for _, fn := range fns {
		c.subjects[fn] = fn.Subject(c.prefix)
	}
	c.conn = watchConn(nc)
	return c
}

// CallOption adjusts one call.
type CallOption func(*nats.Msg)

// WithPlatform asks oci_manifest_config to resolve an index to platform
// "os/arch[/variant]" instead of the worker's default.
func WithPlatform(p string) CallOption {
	return func(m *nats.Msg) {
		if p != "" {
			m.Header.Set(contract.HeaderPlatform, p)
		}
	}
}

// Call sends a raw waPC payload (a JSON string) for fn. An error reply
// is a *contract.Error.
//
// A call is retried once when its request may have been
// lost with a NATS node: the client's connection was lost while it
// waited (retried as soon as the connection is back), or no worker
// acknowledged it within the ack timeout (WithAckTimeout), or no answer
// came within the attempt timeout after an acknowledgement
// (WithAttemptTimeout); a retry that no worker acknowledged either is
// sent once more. The answer to any attempt of a call is its answer,
// even after a retry was sent. When no worker was
// subscribed, the request reached nobody, so sending it again is no
// duplicate and does not use up that retry: it is sent again every
// 250 ms for up to NoRespondersWait, the time a worker whose node died
// takes to re-subscribe elsewhere (all of a fleet's workers may be on
// that node). An error reply, a closed connection or the end of ctx is
// never retried.
func (c *Client) Call(ctx context.Context, fn contract.Function, payload []byte, opts ...CallOption) (reply *Reply, failed error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	m := nats.NewMsg(c.subject(fn))
	m.Data = payload
	for _, o := range opts {
		o(m)
	}
	ctx, span := c.startSpan(ctx, fn, m)
	defer func() { span.end(reply, failed) }()
	p, err := c.mux.register()
	if err != nil {
		return nil, failure(err, nil, false, m.Subject)
	}
	defer c.mux.unregister(p)
	m.Reply = p.reply
	if c.ackTimeout <= 0 {
		m.Reply = p.plainReply()
	}
	ep := c.conn.current()
	if ep.isLost() {
		// Sent now, the request would wait in nats.go's buffer anyway;
		// waiting here keeps the one retry for a loss during the call.
		ep = c.conn.await(ctx, ep)
	}
	var (
		resp    *nats.Msg
		retried bool // the one retry of a request that may have been lost
		// unacked: the retry was sent again because no worker
		// acknowledged it either (see attempt's mode).
		unacked bool
		waited  time.Duration
	)
	for {
		mode := timed
		switch {
		case unacked:
			mode = untimed
		case retried:
			mode = ackOnly
		}
		if resp, err = c.attempt(ctx, m, p, ep, mode); err == nil {
			break
		}
		lost := ep.isLost()
		switch retryFor(err, ctx.Err(), lost) {
		case noRetry:
			return nil, failure(err, ctx.Err(), lost, m.Subject)
		case retryAfterReconnect:
			if retried {
				return nil, failure(err, ctx.Err(), lost, m.Subject)
			}
			retried = true
			ep = c.conn.await(ctx, ep)
		case retryAfterPause:
			if waited >= NoRespondersWait {
				return nil, failure(err, ctx.Err(), lost, m.Subject)
			}
			// An answer to an earlier attempt that comes meanwhile is
			// kept in p.ch for the next attempt.
			t := time.NewTimer(noRespondersPause)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, failure(err, nil, lost, m.Subject)
			}
			waited += noRespondersPause
			ep = c.conn.current()
		case retryNow:
			if retried {
				if unacked || !errors.Is(err, errNoAck) {
					return nil, failure(err, ctx.Err(), lost, m.Subject)
				}
				unacked = true
			}
			retried = true
			ep = c.conn.current()
		}
		if c.onRetry != nil {
			c.onRetry(fn, failure(err, nil, lost, m.Subject))
		}
	}
	if code := resp.Header.Get(contract.HeaderErrorCode); code != "" {
		n, err := strconv.Atoi(code)
		if err != nil {
			n = 500
		}
		return nil, &contract.Error{Code: n, Message: resp.Header.Get(contract.HeaderError), RetryAfter: resp.Header.Get(contract.HeaderRetryAfter)}
	}
	r := &Reply{Body: resp.Data, Cache: contract.Outcome(resp.Header.Get(contract.HeaderCache))}
	if a := resp.Header.Get(contract.HeaderAge); a != "" {
		if age, err := strconv.Atoi(a); err == nil && age >= 0 {
			r.Age = time.Duration(age) * time.Second
		}
	}
	return r, nil
}

// noRespondersPause is how long a call answered "no responders" waits
// before it sends the request again: a worker whose NATS node died
// reconnects to another at once, and its subscriptions take a few round
// trips to reach every node of the cluster.
const noRespondersPause = 250 * time.Millisecond

// NoRespondersWait is how long in all a call answered "no responders"
// keeps sending its request again before it reports the fleet
// unreachable: long enough for workers to re-subscribe after a node
// death, short enough that a fleet that is really gone is reported fast.
const NoRespondersWait = 2 * time.Second

// attemptMode is which timeouts bound an attempt.
type attemptMode int

const (
	// timed: the first attempt; the ack timeout, then the attempt
	// timeout once acknowledged.
	timed attemptMode = iota
	// ackOnly: the retry; the ack timeout only. A retry that nobody
	// acknowledges either (a resend after a reconnect that raced the
	// cluster's interest in the reply subject) is sent once more.
	ackOnly
	// untimed: the last attempt waits for what is left of the call.
	untimed
)

// errNoAck is an attempt's failure when no worker acknowledged it
// within the ack timeout.
var errNoAck = fmt.Errorf("no acknowledgement: %w", context.DeadlineExceeded)

// attempt sends m once, unless an answer to an earlier attempt of the
// call is already in, and waits for the call's answer until ctx ends,
// ep's connection is lost or, as mode says, the ack timeout passes with
// no acknowledgement (errNoAck), or the attempt timeout after one. The
// hit path pays a publish, a timer and a registration with the mux, no
// goroutine.
func (c *Client) attempt(ctx context.Context, m *nats.Msg, p *pending, ep *epoch, mode attemptMode) (*nats.Msg, error) {
	for {
		select {
		case r := <-p.ch:
			if r, done := c.take(p, r); done {
				return r, nil
			}
			continue
		default:
		}
		break
	}
	if err := c.nc.PublishMsg(m); err != nil {
		return nil, err
	}
	wait, waitAck := c.attemptTimeout, c.ackTimeout > 0 && !p.acked && !c.ackless.Load()
	if waitAck && c.ackTimeout < wait {
		wait = c.ackTimeout
	}
	switch {
	case mode == untimed, mode == ackOnly && !waitAck:
		wait = 0
	}
	// One timer from a pool, re-armed by arm: an attempt that ends before
	// it fires (every hit) allocates none.
	timer := c.timers.Get().(*time.Timer)
	defer func() {
		timer.Stop()
		c.timers.Put(timer)
	}()
	dl, _ := ctx.Deadline()
	timeout := arm(timer, dl, wait)
	for {
		select {
		case r := <-p.ch:
			switch {
			case isNoResponders(r):
				if p.acked {
					// A worker took an earlier attempt: its answer is on
					// its way (a draining worker still answers).
					continue
				}
				return nil, nats.ErrNoResponders
			case p.isAck(r):
				if !p.acked {
					p.acked = true
					if mode == timed {
						timeout = arm(timer, dl, c.attemptTimeout)
					} else {
						timeout = arm(timer, dl, 0)
					}
				}
				c.ackless.Store(false)
				continue
			}
			if r, done := c.take(p, r); done {
				return r, nil
			}
		case <-timeout:
			if !p.acked && waitAck {
				return nil, errNoAck
			}
			return nil, context.DeadlineExceeded
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ep.lost.Done():
			if c.nc.IsClosed() {
				return nil, nats.ErrConnectionClosed
			}
			return nil, nats.ErrDisconnected
		}
	}
}

// take looks at a message for call p that arrived before its attempt
// waited for it: an acknowledgement is noted, a stale no-responders
// dropped, an answer returned (done). An answer to a miss that no
// acknowledgement came before says the fleet does not acknowledge.
func (c *Client) take(p *pending, r *nats.Msg) (answer *nats.Msg, done bool) {
	switch {
	case p.isAck(r):
		p.acked = true
		c.ackless.Store(false)
		return nil, false
	case isNoResponders(r):
		return nil, false
	}
	if !p.acked && c.ackTimeout > 0 {
		if o := contract.Outcome(r.Header.Get(contract.HeaderCache)); o == contract.Miss || o == contract.Shared {
			c.ackless.Store(true)
		}
	}
	return r, true
}

// retryKind is what a failed attempt calls for.
type retryKind int

const (
	noRetry retryKind = iota
	// retryAfterReconnect: the connection was lost during the attempt;
	// the request or its reply may have been lost with the node.
	retryAfterReconnect
	// retryNow: no reply within the attempt timeout; the request may have
	// been lost on a node between the client and the worker.
	retryNow
	// retryAfterPause: no responders, which right after a node death
	// can be a worker re-subscribing on another node.
	retryAfterPause
)

// retryFor decides whether a failed attempt is retried: err is the
// attempt's error, callErr the call's context error (its budget spent,
// or cancelled by the caller), lost whether the connection the attempt
// was sent on was lost meanwhile.
func retryFor(err, callErr error, lost bool) retryKind {
	var ce *contract.Error
	switch {
	case err == nil, errors.As(err, &ce), callErr != nil, errors.Is(err, nats.ErrConnectionClosed):
		// A worker answered, the caller is done, or so is the connection.
		return noRetry
	case lost, errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrReconnectBufExceeded):
		return retryAfterReconnect
	case errors.Is(err, nats.ErrNoResponders):
		return retryAfterPause
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return retryNow
	}
	return noRetry
}

// failure is the error a call returns for its last attempt's err.
func failure(err, callErr error, lost bool, subject string) error {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w: no worker subscribed to %s", ErrUnreachable, subject)
	case errors.Is(err, nats.ErrConnectionClosed):
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("%w: no reply on %s in time", ErrUnreachable, subject)
	case callErr == nil && (lost || errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrReconnectBufExceeded)):
		return fmt.Errorf("%w: connection to NATS lost while waiting for the reply on %s", ErrUnreachable, subject)
	}
	return fmt.Errorf("request on %s: %w", subject, err)
}

// Image calls fn for an image reference such as "busybox:latest".
func (c *Client) Image(ctx context.Context, fn contract.Function, image string, opts ...CallOption) (*Reply, error) {
	payload, err := json.Marshal(image)
	if err != nil {
		return nil, err
	}
	return c.Call(ctx, fn, payload, opts...)
}

// Digest returns the manifest digest of image ("sha256:…").
func (c *Client) Digest(ctx context.Context, image string) (string, error) {
	r, err := c.Image(ctx, contract.ManifestDigest, image)
	if err != nil {
		return "", err
	}
	var d struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(r.Body, &d); err != nil {
		return "", fmt.Errorf("decoding digest reply for %s: %w", image, err)
	}
	return d.Digest, nil
}

// Manifest returns image's manifest exactly as the registry sent it.
func (c *Client) Manifest(ctx context.Context, image string) ([]byte, error) {
	r, err := c.Image(ctx, contract.OCIManifest, image)
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}

// ManifestConfig returns {"manifest":…,"digest":…,"config":…} for image,
// resolved to platform ("" for the worker's default).
func (c *Client) ManifestConfig(ctx context.Context, image, platform string) ([]byte, error) {
	r, err := c.Image(ctx, contract.OCIManifestConfig, image, WithPlatform(platform))
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}

// HostCall has wapc-go's host-call signature and forwards every
// kubewarden/oci capability call to the fleet; it refuses the rest, so it
// can be chained in front of another host-call function.
func (c *Client) HostCall(ctx context.Context, binding, namespace, operation string, payload []byte) ([]byte, error) {
	if binding != "kubewarden" || namespace != "oci" {
		return nil, fmt.Errorf("regcap: unsupported host call %s/%s/%s", binding, namespace, operation)
	}
	fn, ok := contract.ParseOperation(operation)
	if !ok {
		return nil, fmt.Errorf("regcap: unsupported host call %s/%s/%s", binding, namespace, operation)
	}
	r, err := c.Call(ctx, fn, payload)
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}

// subject is fn's request subject.
func (c *Client) subject(fn contract.Function) string {
	if s, ok := c.subjects[fn]; ok {
		return s
	}
	return fn.Subject(c.prefix)
}

// newStoppedTimer is a timer for an attempt to arm.
func newStoppedTimer() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// arm sets t to fire after d and returns its channel, or stops it and
// returns nil (never fires) when d is 0 or the deadline dl comes first:
// ctx's end covers that.
func arm(t *time.Timer, dl time.Time, d time.Duration) <-chan time.Time {
	if !t.Stop() {
		// Only with GODEBUG=asynctimerchan=1 (Go before 1.23's timers)
		// can a fired tick still wait in the channel.
		select {
		case <-t.C:
		default:
		}
	}
	if d > 0 && time.Until(dl) > d {
		t.Reset(d)
		return t.C
	}
	return nil
}
