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
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// acceptHeader lists the manifest media types regcap asks for, in this
// order. Schema 1 types are included so that such a manifest is answered
// with a clear "unsupported" rather than a registry 404.
const acceptHeader = string(types.OCIImageIndex + ", " +
	types.DockerManifestList + ", " +
	types.OCIManifestSchema1 + ", " +
	types.DockerManifestSchema2 + ", " +
	types.DockerManifestSchema1Signed + ", " +
	types.DockerManifestSchema1)

// Manifest is a manifest exactly as the registry sent it.
type Manifest struct {
	Body        []byte
	ContentType string
	Digest      v1.Hash
}

// do sends one request to endpoint t and returns its 200 answer.
func (c *Puller) do(ctx context.Context, t target, method, url string, accept string) (_ *http.Response, err error) {
	repo := t.repo
	var resp *http.Response
	defer func() { c.observeResponse(t, resp, err) }()
	rt, err := c.transport(ctx, repo, t.insecure)
	if err != nil {
		return nil, &setupError{err}
	}
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range t.header {
		req.Header[k] = append([]string(nil), v...)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	found := false
	if at, ok := rt.(*authTransport); ok {
		found = at.found
	}
	resp, err = (&http.Client{Transport: rt, CheckRedirect: stayOnAPI(repo.RegistryStr())}).Do(req)
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

// Head returns the digest the registry announces for ref without
// downloading the manifest. ok is false when the registry answered but sent
// no usable Docker-Content-Digest.
func (c *Puller) Head(ctx context.Context, ref name.Reference) (digest v1.Hash, ok bool, err error) {
	_, byDigest := ref.(name.Digest)
	err = c.walk(ctx, ref.Context(), ref.Identifier(), byDigest, func(ctx context.Context, t target) error {
		resp, err := c.do(ctx, t, http.MethodHead, t.url("manifests", ref.Identifier()), acceptHeader)
		if err != nil {
			return err
		}
		resp.Body.Close()
		h, err := v1.NewHash(resp.Header.Get("Docker-Content-Digest"))
		if err != nil || h.Algorithm != "sha256" {
			digest, ok = v1.Hash{}, false
			return nil
		}
		if d, isDigest := ref.(name.Digest); isDigest && d.DigestStr() != h.String() {
			return fmt.Errorf("HEAD %s announced %s: %w", ref.Name(), h, ErrDigestMismatch)
		}
		digest, ok = h, true
		return nil
	})
	if err != nil {
		return v1.Hash{}, false, err
	}
	return digest, ok, nil
}

// Manifest GETs the manifest for ref, bounded by the manifest limit and
// verified against the requested digest (digest references) or the
// announced one (tags).
func (c *Puller) Manifest(ctx context.Context, ref name.Reference) (*Manifest, error) {
	_, byDigest := ref.(name.Digest)
	var m *Manifest
	err := c.walk(ctx, ref.Context(), ref.Identifier(), byDigest, func(ctx context.Context, t target) (err error) {
		m, err = c.manifest(ctx, t, ref)
		return err
	})
	return m, err
}

func (c *Puller) manifest(ctx context.Context, t target, ref name.Reference) (*Manifest, error) {
	resp, err := c.do(ctx, t, http.MethodGet, t.url("manifests", ref.Identifier()), acceptHeader)
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
	if !strings.HasPrefix(contentType, string(types.DockerManifestSchema1Signed)) {
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
	var body []byte
	err := c.walk(ctx, repo, digest.String(), true, func(ctx context.Context, t target) (err error) {
		body, err = c.blob(ctx, t, digest)
		return err
	})
	return body, err
}

func (c *Puller) blob(ctx context.Context, t target, digest v1.Hash) ([]byte, error) {
	resp, err := c.do(ctx, t, http.MethodGet, t.url("blobs", digest.String()), "")
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
