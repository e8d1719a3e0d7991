package registry

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/maypok86/otter/v2"
	"golang.org/x/sync/singleflight"
)

// Default limits, as in the wire contract.
const (
	DefaultManifestLimit = 4 << 20
	DefaultBlobLimit     = 8 << 20
)

// Puller fetches manifests and blobs from registries: HEAD and GET of
// manifests, GET of config blobs, within size limits. It is safe for
// concurrent use.
type Puller struct {
	keychain      authn.Keychain
	base          func(host string) http.RoundTripper
	insecure      func(host string) bool
	check         func(host string) error
	now           func() time.Time // token expiry clock; tests move it
	userAgent     string
	manifestLimit int64
	blobLimit     int64

	endpoints EndpointSource // nil: every registry is its own only endpoint
	observe   func(Fetch)

	transports *otter.Cache[string, http.RoundTripper]
	group      singleflight.Group
	// gen counts Flushes. It is part of every transport's cache and
	// singleflight key, so that a set-up started before a Flush (with the
	// credentials of before) is neither joined by callers after it nor
	// found by them in the cache.
	gen atomic.Uint64
}

// Option configures a Puller.
type Option func(*Puller)

// WithKeychain sets where credentials come from (default: anonymous).
func WithKeychain(kc authn.Keychain) Option { return func(c *Puller) { c.keychain = kc } }

// WithBaseTransport sets the HTTP transport used for a registry host; it is
// where TLS settings and dial guards live.
func WithBaseTransport(f func(host string) http.RoundTripper) Option {
	return func(c *Puller) { c.base = f }
}

// WithInsecure reports which registry hosts may be reached over plain HTTP
// (and HTTPS without verification). Loopback hosts always may.
func WithInsecure(f func(host string) bool) Option { return func(c *Puller) { c.insecure = f } }

// WithRegistryCheck sets a check run before any connection to a registry
// host, e.g. Guard.CheckRegistry for the allow-list. Its error is returned
// as is.
func WithRegistryCheck(f func(host string) error) Option { return func(c *Puller) { c.check = f } }

// A Reloader is a keychain whose source can change (a mounted secret that
// rotates). The Puller asks it before setting up a registry connection and
// drops its cached transports, with their tokens, when it reports a change.
type Reloader interface {
	Reload() (changed bool, err error)
}

// WithUserAgent sets the User-Agent prefix sent to registries.
func WithUserAgent(ua string) Option { return func(c *Puller) { c.userAgent = ua } }

// WithLimits sets the manifest and blob size limits in bytes.
func WithLimits(manifest, blob int64) Option {
	return func(c *Puller) { c.manifestLimit, c.blobLimit = manifest, blob }
}

// New returns a Puller.
func New(opts ...Option) *Puller {
	c := &Puller{
		keychain:      authn.NewMultiKeychain(), // anonymous
		base:          func(string) http.RoundTripper { return http.DefaultTransport },
		insecure:      func(string) bool { return false },
		check:         func(string) error { return nil },
		now:           time.Now,
		userAgent:     "regcap",
		manifestLimit: DefaultManifestLimit,
		blobLimit:     DefaultBlobLimit,
	}
	for _, o := range opts {
		o(c)
	}
	c.transports = otter.Must(&otter.Options[string, http.RoundTripper]{
		MaximumSize: 4096,
		// A transport refreshes its own bearer token (auth.go);
		// rebuilding now and then re-pings the registry, in case its
		// auth set-up changed.
		ExpiryCalculator: otter.ExpiryWriting[string, http.RoundTripper](time.Hour),
	})
	return c
}

// Flush drops every cached transport, e.g. after credentials changed. A
// set-up in flight when Flush is called still answers the callers already
// waiting for it, but its transport is not kept: later callers set up
// their own, with the credentials of now.
func (c *Puller) Flush() {
	c.gen.Add(1)
	c.transports.InvalidateAll()
}

// IsLoopback reports whether host (with or without port) names a loopback
// address, which may be reached over plain HTTP.
func IsLoopback(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (c *Puller) plainHTTPAllowed(host string) bool {
	return IsLoopback(host) || c.insecure(host)
}

// setupTimeout bounds the set-up of a repository's transport (credential
// lookup, ping, first token exchange). The set-up runs on a context of its
// own, detached from the caller who happened to start it, so that this
// caller giving up does not fail the others waiting for the same set-up;
// this bound keeps a registry that never answers from holding it forever.
// Each caller still waits only until its own deadline.
const setupTimeout = 30 * time.Second

// transport returns the authenticated transport for repo, creating it once:
// the ping and token exchange happen here, not on every call. insecure
// (a mirror configured as http:// or insecure) allows plain HTTP to repo's
// host as insecure_sources does.
func (c *Puller) transport(ctx context.Context, repo name.Repository, insecure bool) (http.RoundTripper, error) {
	host := repo.RegistryStr()
	allowed := func(h string) bool { return c.plainHTTPAllowed(h) || (insecure && h == host) }
	if err := c.check(host); err != nil {
		return nil, err
	}
	if r, ok := c.keychain.(Reloader); ok {
		// A failed reload keeps the previous credentials; the next
		// check tries again.
		if changed, _ := r.Reload(); changed {
			c.Flush()
		}
	}
	gen := c.gen.Load()
	key := strconv.FormatUint(gen, 10) + " " + strconv.FormatBool(insecure) + " " + repo.Name()
	if rt, ok := c.transports.GetIfPresent(key); ok {
		return rt, nil
	}
	ch := c.group.DoChan(key, func() (any, error) {
		if rt, ok := c.transports.GetIfPresent(key); ok {
			return rt, nil
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), setupTimeout)
		defer cancel()
		reg := repo.Registry
		if allowed(host) {
			// Lets ggcr's ping try plain HTTP after HTTPS.
			r, err := name.NewRegistry(host, name.Insecure)
			if err != nil {
				return nil, err
			}
			reg = r
		}
		auth, err := authn.Resolve(ctx, c.keychain, repo)
		if err != nil {
			return nil, fmt.Errorf("resolving credentials for %s: %w", host, err)
		}
		base := &schemeGuard{inner: c.base(host), allowed: allowed}
		inner := transport.NewUserAgent(transport.NewRetry(base,
			transport.WithRetryBackoff(transport.Backoff{Duration: 100 * time.Millisecond, Factor: 3, Jitter: 0.1, Steps: 3}),
			transport.WithRetryStatusCodes(), // statuses are the caller's to judge
		), c.userAgent)
		found := auth != authn.Anonymous
		rt, err := newAuthTransport(ctx, reg, auth, found, inner, []string{repo.Scope(transport.PullScope)}, c.now)
		if err != nil {
			return nil, accessError(host, found, err)
		}
		if c.gen.Load() == gen {
			// Even if a Flush comes between this check and the Set,
			// the entry is under the old generation's key, which no
			// later caller looks up; it only waits for eviction.
			c.transports.Set(key, rt)
		}
		return rt, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(http.RoundTripper), nil
	case <-ctx.Done():
		// This caller's deadline passed; the set-up goes on for the
		// others.
		return nil, ctx.Err()
	}
}

// schemeGuard refuses plain HTTP to hosts that are neither loopback nor
// listed as insecure. ggcr would otherwise fall back to HTTP for private
// (RFC 1918) addresses on its own.
type schemeGuard struct {
	inner   http.RoundTripper
	allowed func(host string) bool
}

func (g *schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" && !g.allowed(r.URL.Host) {
		return nil, fmt.Errorf("%s: %w (add it to insecure_sources to allow)", r.URL.Host, ErrInsecureScheme)
	}
	return g.inner.RoundTrip(r)
}
