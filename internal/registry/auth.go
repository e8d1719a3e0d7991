package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"
)

// defaultTokenLifetime is what the distribution token spec says to assume
// when a token response carries no expires_in.
const defaultTokenLifetime = 60 * time.Second

// authTransport attaches one repository's credentials to requests for its
// registry. It replaces ggcr's bearer transport, which refreshes the token
// once per request that sees a 401: after an expiry, N requests in flight
// would mean N token exchanges. Here a token is exchanged once, used until
// it expires or is refused, and then refreshed once for everyone.
type authTransport struct {
	reg       name.Registry
	inner     http.RoundTripper
	auth      authn.Authenticator
	challenge *transport.Challenge
	scopes    []string
	scheme    string // what the ping found: https, or http for insecure registries
	// found reports whether credentials were configured for the registry
	// (as opposed to anonymous access); errors say so.
	found bool
	now   func() time.Time

	// static is the Authorization header of a Basic challenge, sent as is.
	static string

	mu       sync.RWMutex
	token    string
	gen      uint64 // increments with every new token
	expires  time.Time
	accepted bool // the registry accepted the current token at least once
	refresh  singleflight.Group
}

// newAuthTransport pings the registry and, for a bearer challenge, makes the
// first token exchange.
func newAuthTransport(ctx context.Context, reg name.Registry, auth authn.Authenticator, found bool, inner http.RoundTripper, scopes []string, now func() time.Time) (*authTransport, error) {
	pr, err := transport.Ping(ctx, reg, inner)
	if err != nil {
		return nil, err
	}
	t := &authTransport{reg: reg, inner: inner, auth: auth, challenge: pr, scopes: scopes,
		scheme: "https", found: found, now: now}
	if pr.Insecure {
		t.scheme = "http"
	}
	switch strings.ToLower(pr.Scheme) {
	case "bearer":
		if _, err := t.exchange(ctx, 0); err != nil {
			return nil, err
		}
	case "basic":
		cfg, err := authn.Authorization(ctx, auth)
		if err != nil {
			return nil, err
		}
		switch {
		case cfg.RegistryToken != "":
			t.static = "Bearer " + cfg.RegistryToken
		case cfg.Username != "" || cfg.Password != "":
			t.static = "Basic " + base64.StdEncoding.EncodeToString([]byte(cfg.Username+":"+cfg.Password))
		case cfg.Auth != "":
			t.static = "Basic " + cfg.Auth
		}
	}
	return t, nil
}

// exchange gets a new token unless one newer than generation gen already
// exists; concurrent callers share one exchange.
func (t *authTransport) exchange(ctx context.Context, gen uint64) (string, error) {
	ch := t.refresh.DoChan(fmt.Sprint(gen), func() (any, error) {
		t.mu.RLock()
		cur, curGen := t.token, t.gen
		t.mu.RUnlock()
		if curGen != gen {
			// Someone refreshed between our failure and now.
			return cur, nil
		}
		// The exchange runs on its own context: one caller giving up must
		// not fail the others waiting for the same token.
		xctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		rec := &tokenRecorder{inner: t.inner}
		tok, err := transport.Exchange(xctx, t.reg, t.auth, rec, t.scopes, t.challenge)
		if err != nil {
			return "", rec.wrap(err)
		}
		s := tok.Token
		if s == "" {
			s = tok.AccessToken
		}
		life := time.Duration(tok.ExpiresIn) * time.Second
		if life <= 0 {
			life = defaultTokenLifetime
		}
		t.mu.Lock()
		t.token, t.gen, t.accepted = s, gen+1, false
		// Refresh a little early so that a request does not set out
		// with a token that expires on the way.
		t.expires = t.now().Add(life - life/10)
		t.mu.Unlock()
		return s, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		// This caller's deadline passed; the exchange goes on for the
		// others.
		return "", ctx.Err()
	}
}

// tokenRecorder keeps what ggcr's token exchange drops: the Retry-After of
// a token endpoint that rate-limits us.
type tokenRecorder struct {
	inner http.RoundTripper

	mu      sync.Mutex
	limited *StatusError
}

func (r *tokenRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.inner.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		r.mu.Lock()
		r.limited = &StatusError{
			Method:     req.Method,
			URL:        req.URL.Scheme + "://" + req.URL.Host + req.URL.Path,
			StatusCode: resp.StatusCode,
			RetryAfter: resp.Header.Get("Retry-After"),
			Detail:     "token endpoint rate-limited us",
		}
		r.mu.Unlock()
	}
	return resp, err
}

// wrap turns a 429 from the token endpoint into a *StatusError carrying
// its Retry-After; other errors are returned as they are.
func (r *tokenRecorder) wrap(err error) error {
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusTooManyRequests {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.limited == nil {
		return err
	}
	return r.limited
}

func (t *authTransport) bearer() bool { return strings.EqualFold(t.challenge.Scheme, "bearer") }

// current returns a token that has not expired, refreshing it if needed.
func (t *authTransport) current(ctx context.Context) (string, uint64, error) {
	t.mu.RLock()
	tok, gen, exp := t.token, t.gen, t.expires
	t.mu.RUnlock()
	if t.now().Before(exp) {
		return tok, gen, nil
	}
	if _, err := t.exchange(ctx, gen); err != nil {
		return "", 0, err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.token, t.gen, nil
}

func (t *authTransport) matches(r *http.Request) bool {
	return r.URL.Host == t.reg.RegistryStr()
}

// RoundTrip implements http.RoundTripper.
func (t *authTransport) RoundTrip(in *http.Request) (*http.Response, error) {
	if !t.matches(in) {
		// A redirect elsewhere (blob storage): never send credentials.
		return t.inner.RoundTrip(in)
	}
	r := in.Clone(in.Context())
	r.URL.Scheme = t.scheme
	if !t.bearer() {
		if t.static != "" {
			r.Header.Set("Authorization", t.static)
		}
		return t.inner.RoundTrip(r)
	}
	tok, gen, err := t.current(r.Context())
	if err != nil {
		return nil, err
	}
	r.Header.Set("Authorization", "Bearer "+tok)
	resp, err := t.inner.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		if err == nil {
			t.markAccepted(gen)
		}
		return resp, err
	}
	t.mu.RLock()
	wasAccepted := t.accepted || t.gen != gen
	t.mu.RUnlock()
	if !wasAccepted {
		// A token the registry never accepted is refused for what it
		// grants, not for its age: asking again would give the same one.
		return resp, nil
	}
	resp.Body.Close()
	if tok, err = t.exchange(r.Context(), gen); err != nil {
		return nil, err
	}
	r2 := in.Clone(in.Context())
	r2.URL.Scheme = t.scheme
	r2.Header.Set("Authorization", "Bearer "+tok)
	return t.inner.RoundTrip(r2)
}

func (t *authTransport) markAccepted(gen uint64) {
	t.mu.RLock()
	done := t.accepted || t.gen != gen
	t.mu.RUnlock()
	if done {
		return
	}
	t.mu.Lock()
	if t.gen == gen {
		t.accepted = true
	}
	t.mu.Unlock()
}
