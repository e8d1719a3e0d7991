package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/regcap/regcap/internal/mirrors"
)

// EndpointSource says which endpoints serve a logical reference, in order
// (*mirrors.Resolver).
type EndpointSource interface {
	Endpoints(q mirrors.Request) ([]mirrors.Endpoint, error)
}

// WithEndpoints makes the Puller ask src which endpoints (mirrors, then
// usually the registry itself) to try for each reference, instead of the
// registry alone.
func WithEndpoints(src EndpointSource) Option { return func(c *Puller) { c.endpoints = src } }

// A Fetch is one endpoint's answer, as told to the observer: which
// endpoint served (or failed) a request for a logical registry, and the
// rate-limit headers it sent.
type Fetch struct {
	// Registry is the logical registry, canonical (docker.io for Docker Hub).
	Registry string
	// Endpoint is the host contacted; Mirror says whether it is not the
	// registry itself. Both come from the configuration, never from
	// requests alone, so their cardinality is bounded by it.
	Endpoint string
	Mirror   bool
	// Err is nil when this endpoint answered.
	Err error
	// RateLimitLimit and RateLimitRemaining are Docker Hub's
	// ratelimit-limit and ratelimit-remaining headers (e.g. "100;w=21600"),
	// RetryAfter the Retry-After header; empty when not sent.
	RateLimitLimit, RateLimitRemaining, RetryAfter string
}

// WithFetchObserver is told about every endpoint's answer (metrics, logs).
// It must not block.
func WithFetchObserver(f func(Fetch)) Option { return func(c *Puller) { c.observe = f } }

// target is one endpoint of a logical repository, as the Puller contacts
// it.
type target struct {
	logical  string          // canonical logical registry
	repo     name.Repository // on the endpoint's host: its credentials, its transport
	base     string          // scheme://host/path, e.g. https://mirror:5000/v2
	ns       string          // ?ns=
	header   http.Header
	insecure bool
	mirror   bool
}

func (t target) url(kind, id string) string {
	u := t.base + "/" + t.repo.RepositoryStr() + "/" + kind + "/" + id
	if t.ns != "" {
		u += "?ns=" + url.QueryEscape(t.ns)
	}
	return u
}

// Attempt is one endpoint tried and what it said.
type Attempt struct {
	Endpoint string // scheme://host/path
	Err      error
}

// EndpointsError is a walk over several endpoints where none answered: it
// names every endpoint tried and what each said. It unwraps to the last
// one's error, which decides the answer (a 404 everywhere is a 404, a
// 429 from the last a 429 with its Retry-After).
type EndpointsError struct {
	Reference string
	Attempts  []Attempt
}

func (e *EndpointsError) Error() string {
	return fmt.Sprintf("%s: %s", e.Reference, e.Tried())
}

// Tried says, bounded, which endpoints were tried and what each said.
func (e *EndpointsError) Tried() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d endpoints tried:", len(e.Attempts))
	for i, a := range e.Attempts {
		if i > 0 {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, " %s: %s", a.Endpoint, oneLine(a.Err.Error()))
	}
	s := b.String()
	if len(s) > 1000 {
		s = s[:1000] + "…"
	}
	return s
}

// Unwrap returns the last endpoint's error.
func (e *EndpointsError) Unwrap() error { return e.Attempts[len(e.Attempts)-1].Err }

// targets lists the endpoints for repo asked by tag or by digest.
func (c *Puller) targets(repo name.Repository, id string, byDigest bool) ([]target, error) {
	logical := mirrors.Canonical(repo.RegistryStr())
	if c.endpoints == nil {
		return []target{{logical: logical, repo: repo, base: "https://" + repo.RegistryStr() + "/v2"}}, nil
	}
	q := mirrors.Request{Registry: repo.RegistryStr(), Repository: repo.RepositoryStr()}
	if byDigest {
		q.Digest = id
	} else {
		q.Tag = id
	}
	eps, err := c.endpoints.Endpoints(q)
	switch {
	case errors.Is(err, mirrors.ErrBlocked), errors.Is(err, mirrors.ErrNoEndpoint):
		// Refused by configuration, before any network activity: 403.
		return nil, fmt.Errorf("%w: %w", ErrDenied, err)
	case err != nil:
		return nil, err
	}
	out := make([]target, 0, len(eps))
	for _, ep := range eps {
		r, err := name.NewRepository(ep.Host+"/"+ep.Repository, name.WeakValidation)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s for %s: %w", ep.URL(), q, err)
		}
		out = append(out, target{
			logical: logical, repo: r, base: strings.TrimSuffix(ep.URL(), "/"), ns: ep.Namespace,
			header: ep.Header, insecure: ep.Insecure, mirror: ep.Mirror,
		})
	}
	return out, nil
}

// walk calls f with each endpoint of repo in order until one answers. It
// moves on after a connection error, a 404, a 5xx or a 429 (at once: no
// retry on a rate limit); any other answer (401, 403, a digest mismatch,
// a policy refusal) ends the walk. The caller's context ending ends it
// too. Every endpoint but the last gets half the time left, so that one
// that hangs leaves time for the next.
func (c *Puller) walk(ctx context.Context, repo name.Repository, id string, byDigest bool, f func(context.Context, target) error) error {
	if c.endpoints != nil {
		// The logical registry is judged as before; each endpoint is
		// judged again when its transport is set up.
		if err := c.check(repo.RegistryStr()); err != nil {
			return err
		}
	}
	ts, err := c.targets(repo, id, byDigest)
	if err != nil {
		return err
	}
	if len(ts) == 1 {
		return f(ctx, ts[0])
	}
	attempts := make([]Attempt, 0, len(ts))
	for i, t := range ts {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && i < len(ts)-1 {
			actx, cancel = context.WithTimeout(ctx, time.Until(dl)/2)
		}
		err := f(actx, t)
		cancel()
		if err == nil {
			return nil
		}
		attempts = append(attempts, Attempt{Endpoint: t.base, Err: err})
		if ctx.Err() != nil || !moveOn(err) {
			break
		}
	}
	return &EndpointsError{Reference: repo.Name() + refSep(byDigest) + id, Attempts: attempts}
}

func refSep(byDigest bool) string {
	if byDigest {
		return "@"
	}
	return ":"
}

// moveOn reports whether the next endpoint may answer where this one
// failed.
func moveOn(err error) bool {
	if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrDenied) || errors.Is(err, ErrInsecureScheme) {
		return false
	}
	status := 0
	var (
		se *StatusError
		te *transport.Error
		ae *AccessError
		su *setupError
	)
	if errors.As(err, &su) && !errors.As(err, &ae) {
		// The ping failed: nothing there speaks the registry API as
		// configured (TLS refused, plain HTTP to an HTTPS port).
		var pe *transport.Error
		return !errors.As(err, &pe) || (pe.StatusCode != http.StatusUnauthorized && pe.StatusCode != http.StatusForbidden)
	}
	switch {
	case errors.As(err, &se):
		status = se.StatusCode
	case errors.As(err, &te):
		status = te.StatusCode
	default:
		// No HTTP answer: refused, reset, DNS, TLS, or this
		// endpoint's share of the time ran out.
		return true
	}
	return status == http.StatusNotFound || status == http.StatusTooManyRequests || status >= 500
}

// setupError is a failure to set up an endpoint's connection (ping, first
// token exchange), not an answer to the request itself.
type setupError struct{ err error }

func (e *setupError) Error() string { return e.err.Error() }

// Unwrap returns the cause.
func (e *setupError) Unwrap() error { return e.err }

// observeResponse tells the observer what an endpoint answered.
func (c *Puller) observeResponse(t target, resp *http.Response, err error) {
	if c.observe == nil {
		return
	}
	f := Fetch{Registry: t.logical, Endpoint: t.repo.RegistryStr(), Mirror: t.mirror, Err: err}
	if resp != nil {
		f.RateLimitLimit = resp.Header.Get("Ratelimit-Limit")
		f.RateLimitRemaining = resp.Header.Get("Ratelimit-Remaining")
		f.RetryAfter = resp.Header.Get("Retry-After")
	}
	c.observe(f)
}
