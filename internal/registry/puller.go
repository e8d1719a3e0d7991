// Package registry talks to OCI distribution registries: one reused,
// authenticated transport per repository, bounded reads, digest checks and
// errors that keep what the registry said (status, Retry-After) so that the
// caller can classify them.
package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/maypok86/otter/v2"
	"golang.org/x/sync/singleflight"
)

// Default limits, as in the wire contract.
const (
	DefaultManifestLimit = 4 << 20
	DefaultBlobLimit     = 8 << 20
)

// manifestAccept lists the manifest media types regcap asks for. Schema 1
// types are included so that such a manifest is answered with a clear
// "unsupported" rather than a registry 404. Never modified.
var manifestAccept = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.v1+prettyjws",
	"application/vnd.docker.distribution.manifest.v1+json",
}

var acceptHeader = strings.Join(manifestAccept, ", ")

// Sentinel errors; callers match them with errors.Is.
var (
	// ErrTooLarge is returned when a body exceeds its limit.
	ErrTooLarge = errors.New("body over the size limit")
	// ErrDigestMismatch is returned when a body does not hash to the
	// digest it was asked for or announced with.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrInsecureScheme is returned when plain HTTP would be used for a
	// registry that is neither loopback nor listed as insecure.
	ErrInsecureScheme = errors.New("plain HTTP refused")
)

// StatusError is a registry answer with an unexpected HTTP status.
type StatusError struct {
	Method     string
	URL        string // without query or credentials
	StatusCode int
	// RetryAfter is the registry's Retry-After header, verbatim.
	RetryAfter string
	// Detail is what the registry said in its error body, if anything.
	Detail string
	// Elsewhere is set when the answer came from another host than the
	// registry (blob storage, after a redirect): its 401 or 403 is not
	// the registry's access decision.
	Elsewhere bool
}

func (e *StatusError) Error() string {
	who := "registry"
	if e.Elsewhere {
		who = "blob storage (redirect target)"
	}
	msg := fmt.Sprintf("%s %s: %s answered %d %s", e.Method, e.URL, who, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// AccessError is a registry refusing access (401 or 403), with whether
// credentials were configured for that registry, so that the answer can
// tell "wrong credentials" from "no credentials". It never holds the
// credentials themselves.
type AccessError struct {
	Registry         string
	StatusCode       int
	CredentialsFound bool
	Err              error
}

func (e *AccessError) Error() string { return e.Err.Error() }

// Unwrap returns the registry's error.
func (e *AccessError) Unwrap() error { return e.Err }

// accessError wraps err in an *AccessError when it is a 401 or 403.
func accessError(registry string, found bool, err error) error {
	status := 0
	var (
		se *StatusError
		te *transport.Error
	)
	switch {
	case errors.As(err, &se):
		status = se.StatusCode
	case errors.As(err, &te):
		status = te.StatusCode
	}
	if status != http.StatusUnauthorized && status != http.StatusForbidden {
		return err
	}
	return &AccessError{Registry: registry, StatusCode: status, CredentialsFound: found, Err: err}
}

// Manifest is a manifest exactly as the registry sent it.
type Manifest struct {
	Body        []byte
	ContentType string
	Digest      v1.Hash
}

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
// the ping and token exchange happen here, not on every call.
func (c *Puller) transport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	host := repo.RegistryStr()
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
	key := strconv.FormatUint(gen, 10) + " " + repo.Name()
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
		if c.plainHTTPAllowed(host) {
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
		base := &schemeGuard{inner: c.base(host), allowed: c.plainHTTPAllowed}
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

func manifestURL(ref name.Reference) string {
	return fmt.Sprintf("https://%s/v2/%s/manifests/%s", ref.Context().RegistryStr(), ref.Context().RepositoryStr(), ref.Identifier())
}

func (c *Puller) do(ctx context.Context, repo name.Repository, method, url string, accept string) (*http.Response, error) {
	rt, err := c.transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	found := false
	if at, ok := rt.(*authTransport); ok {
		found = at.found
	}
	resp, err := (&http.Client{Transport: rt, CheckRedirect: stayOnAPI(repo.RegistryStr())}).Do(req)
	if err != nil {
		// A token refresh refused (401/403) on the way is an access
		// error of the registry, saying whether we had credentials.
		return nil, accessError(repo.RegistryStr(), found, redactURLError(err))
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		se := statusError(resp)
		if resp.Request.URL.Host != repo.RegistryStr() {
			// Blob storage after a redirect: a plain status error,
			// naming its host, never the registry's access error.
			se.Elsewhere = true
			return nil, se
		}
		return nil, accessError(repo.RegistryStr(), found, se)
	}
	return resp, nil
}

// stayOnAPI keeps redirects on the registry's own /v2/ API; a redirect to
// another host (blob storage) is followed, and its address judged by the
// dial guard like any other.
func stayOnAPI(registry string) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		if strings.EqualFold(req.URL.Host, registry) && !strings.HasPrefix(req.URL.Path, "/v2/") {
			return fmt.Errorf("registry redirected to %s, outside its /v2/ API", req.URL.Path)
		}
		return nil
	}
}

// redactURLError drops the query and fragment from the URL of the
// *url.Error in err: a redirect to blob storage carries a presigned URL
// (X-Amz-Signature=…) that must not reach answers or logs.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
			ue.URL = u.String()
		} else if i := strings.IndexAny(ue.URL, "?#"); i >= 0 {
			ue.URL = ue.URL[:i]
		}
	}
	return err
}

func statusError(resp *http.Response) *StatusError {
	se := &StatusError{
		Method:     resp.Request.Method,
		URL:        resp.Request.URL.Scheme + "://" + resp.Request.URL.Host + resp.Request.URL.Path,
		StatusCode: resp.StatusCode,
		RetryAfter: resp.Header.Get("Retry-After"),
	}
	if resp.Request.Method != http.MethodHead {
		// ggcr parses the registry's {"errors":[…]} body for us.
		if terr := transport.CheckError(resp); terr != nil {
			var te *transport.Error
			if errors.As(terr, &te) && len(te.Errors) > 0 {
				parts := make([]string, 0, len(te.Errors))
				for _, d := range te.Errors {
					// Diagnostic.String appends Detail with %v, which
					// for the usual map reads "map[Tag:v1]": kept only
					// when the registry sent it as text.
					part := string(d.Code) + ": " + d.Message
					if detail, ok := d.Detail.(string); ok && detail != "" {
						part += " (" + detail + ")"
					}
					parts = append(parts, part)
				}
				se.Detail = oneLine(strings.Join(parts, "; "))
			}
		}
	}
	return se
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// Head returns the digest the registry announces for ref without
// downloading the manifest. ok is false when the registry answered but sent
// no usable Docker-Content-Digest.
func (c *Puller) Head(ctx context.Context, ref name.Reference) (digest v1.Hash, ok bool, err error) {
	resp, err := c.do(ctx, ref.Context(), http.MethodHead, manifestURL(ref), acceptHeader)
	if err != nil {
		return v1.Hash{}, false, err
	}
	resp.Body.Close()
	h, err := v1.NewHash(resp.Header.Get("Docker-Content-Digest"))
	if err != nil || h.Algorithm != "sha256" {
		return v1.Hash{}, false, nil
	}
	if d, isDigest := ref.(name.Digest); isDigest && d.DigestStr() != h.String() {
		return v1.Hash{}, false, fmt.Errorf("HEAD %s announced %s: %w", ref.Name(), h, ErrDigestMismatch)
	}
	return h, true, nil
}

// Manifest GETs the manifest for ref, bounded by the manifest limit and
// verified against the requested digest (digest references) or the
// announced one (tags).
func (c *Puller) Manifest(ctx context.Context, ref name.Reference) (*Manifest, error) {
	resp, err := c.do(ctx, ref.Context(), http.MethodGet, manifestURL(ref), acceptHeader)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := readLimited(resp, c.manifestLimit)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	got := sha256Hash(body)
	// Verified against the requested digest for a digest reference, else
	// against the digest the registry announces, for every media type.
	want, source := resp.Header.Get("Docker-Content-Digest"), "Docker-Content-Digest"
	if d, isDigest := ref.(name.Digest); isDigest {
		want, source = d.DigestStr(), "the requested digest"
		if !strings.HasPrefix(want, "sha256:") {
			return nil, fmt.Errorf("cannot verify %s: only sha256 digests are supported: %w", want, ErrDigestMismatch)
		}
	}
	if strings.HasPrefix(want, "sha256:") && want != got.String() && !signedSchema1(resp.Header.Get("Content-Type"), body) {
		return nil, fmt.Errorf("manifest body hashes to %s, %s is %s: %w", got, source, want, ErrDigestMismatch)
	}
	return &Manifest{Body: body, ContentType: resp.Header.Get("Content-Type"), Digest: got}, nil
}

// signedSchema1 reports whether body is a signed Docker schema 1
// manifest, whose announced digest covers the body without its
// signatures. It is let through unverified only to be refused (415) by
// the caller, which refuses schema 1: judged by the body, not by the
// Content-Type a registry chooses, so no other manifest skips the check.
func signedSchema1(contentType string, body []byte) bool {
	if !strings.HasPrefix(contentType, "application/vnd.docker.distribution.manifest.v1+prettyjws") {
		return false
	}
	var m struct {
		SchemaVersion int `json:"schemaVersion"`
	}
	return json.Unmarshal(body, &m) == nil && m.SchemaVersion == 1
}

// Blob GETs a blob of repo (a config), bounded by the blob limit and
// verified against its digest. Redirects to blob storage are followed.
func (c *Puller) Blob(ctx context.Context, repo name.Repository, digest v1.Hash) ([]byte, error) {
	url := fmt.Sprintf("https://%s/v2/%s/blobs/%s", repo.RegistryStr(), repo.RepositoryStr(), digest)
	resp, err := c.do(ctx, repo, http.MethodGet, url, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := readLimited(resp, c.blobLimit)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", digest, err)
	}
	if digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("cannot verify blob %s: only sha256 digests are supported: %w", digest, ErrDigestMismatch)
	}
	if got := sha256Hash(body); got != digest {
		return nil, fmt.Errorf("blob hashes to %s, expected %s: %w", got, digest, ErrDigestMismatch)
	}
	return body, nil
}

// BlobLimit is the configured blob size limit.
func (c *Puller) BlobLimit() int64 { return c.blobLimit }

// readLimited reads at most limit bytes and fails, without buffering the
// rest, if there are more.
func readLimited(resp *http.Response, limit int64) ([]byte, error) {
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%d bytes, limit %d: %w", resp.ContentLength, limit, ErrTooLarge)
	}
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		buf.Grow(int(resp.ContentLength))
	}
	n, err := io.Copy(&buf, io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading body: %w", err)
	}
	if n > limit {
		return nil, fmt.Errorf("over %d bytes: %w", limit, ErrTooLarge)
	}
	return buf.Bytes(), nil
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}
