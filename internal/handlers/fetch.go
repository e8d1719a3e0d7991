package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/registry"
)

// Registry is what the capabilities need from a registry client.
type Registry interface {
	Head(ctx context.Context, ref name.Reference) (v1.Hash, bool, error)
	Manifest(ctx context.Context, ref name.Reference) (*registry.Manifest, error)
	Blob(ctx context.Context, repo name.Repository, digest v1.Hash) ([]byte, error)
	BlobLimit() int64
}

// Fetcher answers capability requests from a registry.
type Fetcher struct {
	reg Registry
	log *zap.Logger
}

// FetcherOption configures a Fetcher.
type FetcherOption func(*Fetcher)

// WithLogger sets the logger: where a digest came from is logged at
// debug level.
func WithLogger(l *zap.Logger) FetcherOption { return func(f *Fetcher) { f.log = l } }

// NewFetcher returns a Fetcher over reg.
func NewFetcher(reg Registry, opts ...FetcherOption) *Fetcher {
	f := &Fetcher{reg: reg, log: zap.NewNop()}
	for _, o := range opts {
		o(f)
	}
	return f
}

// Fetch answers req with the reply body of the contract. Every error is
// a *contract.Error, classified here.
func (f *Fetcher) Fetch(ctx context.Context, req Request) ([]byte, error) {
	var (
		body []byte
		err  error
	)
	switch req.Function {
	case contract.ManifestDigest:
		body, err = f.digest(ctx, req.Ref)
	case contract.OCIManifest:
		body, err = f.manifest(ctx, req.Ref)
	case contract.OCIManifestConfig:
		body, err = f.manifestConfig(ctx, req.Ref, req.Platform)
	default:
		return nil, errorf(400, req.Ref.Name(), "unknown function %q", req.Function)
	}
	if err != nil {
		return nil, Classify(req.Ref.Name(), err)
	}
	return body, nil
}

func digestReply(h v1.Hash) []byte {
	return []byte(`{"digest":"` + h.String() + `"}`)
}

// digest HEADs the manifest and falls back to GET when HEAD fails or gives
// no digest. HEAD leaves Docker Hub's pull counter untouched.
func (f *Fetcher) digest(ctx context.Context, ref name.Reference) ([]byte, error) {
	h, ok, err := f.reg.Head(ctx, ref)
	if err == nil && ok {
		f.log.Debug("manifest digest from the HEAD's Docker-Content-Digest", zap.String("image", ref.Name()), zap.String("digest", h.String()))
		return digestReply(h), nil
	}
	if err != nil && !headFallback(ctx, err) {
		return nil, err
	}
	m, gerr := f.reg.Manifest(ctx, ref)
	if gerr != nil {
		return nil, gerr
	}
	why := "the HEAD gave no digest"
	if err != nil {
		why = "the HEAD failed: " + err.Error()
	}
	f.log.Debug("manifest digest from the sha256 of the GET body", zap.String("image", ref.Name()),
		zap.String("digest", m.Digest.String()), zap.String("why", why))
	return digestReply(m.Digest), nil
}

// headFallback reports whether a GET may succeed where HEAD failed. A GET
// cannot help once the deadline passed, after a rate limit it would only
// spend more of the quota, and a policy refusal (ErrDenied) or the
// registry refusing access (401, 403) would only be repeated.
func headFallback(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, registry.ErrDigestMismatch) || errors.Is(err, registry.ErrDenied) {
		return false
	}
	var ae *registry.AccessError
	if errors.As(err, &ae) && (ae.StatusCode == 401 || ae.StatusCode == 403) {
		return false
	}
	var se *registry.StatusError
	return !errors.As(err, &se) || se.StatusCode != 429
}

func (f *Fetcher) manifest(ctx context.Context, ref name.Reference) ([]byte, error) {
	m, err := f.reg.Manifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	if _, err := parseManifest(ref, m); err != nil {
		return nil, err
	}
	return m.Body, nil
}

func (f *Fetcher) manifestConfig(ctx context.Context, ref name.Reference, want v1.Platform) ([]byte, error) {
	m, err := f.reg.Manifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	pm, err := parseManifest(ref, m)
	if err != nil {
		return nil, err
	}
	if pm.isIndex {
		d, err := pickPlatform(ref, pm, want)
		if err != nil {
			return nil, err
		}
		child := ref.Context().Digest(d.String())
		if m, err = f.reg.Manifest(ctx, child); err != nil {
			return nil, err
		}
		if pm, err = parseManifest(child, m); err != nil {
			return nil, err
		}
		if pm.isIndex {
			return nil, errorf(415, ref.Name(), "index entry %s for %s is itself an index", d, FormatPlatform(want))
		}
	}
	if pm.Config == nil {
		return nil, errorf(502, ref.Name(), "image manifest %s has no config descriptor", m.Digest)
	}
	cd, err := v1.NewHash(pm.Config.Digest)
	if err != nil {
		return nil, errorf(502, ref.Name(), "image manifest %s has an invalid config digest %q", m.Digest, pm.Config.Digest)
	}
	if pm.Config.Size > f.reg.BlobLimit() {
		return nil, errorf(413, ref.Name(), "config blob %s is %d bytes, over the %d-byte limit", cd, pm.Config.Size, f.reg.BlobLimit())
	}
	cfg, err := f.reg.Blob(ctx, ref.Context(), cd)
	if err != nil {
		return nil, err
	}
	// Blob checked the sha256; the size must match the descriptor too.
	if int64(len(cfg)) != pm.Config.Size {
		return nil, errorf(502, ref.Name(), "registry sent corrupt content: config blob %s is %d bytes, its descriptor says %d", cd, len(cfg), pm.Config.Size)
	}
	if !json.Valid(cfg) {
		return nil, errorf(502, ref.Name(), "config blob %s is not valid JSON", cd)
	}
	// Raw bytes embedded as sent, in Kubewarden's field order.
	var b bytes.Buffer
	b.Grow(len(m.Body) + len(cfg) + 100)
	b.WriteString(`{"manifest":`)
	b.Write(m.Body)
	b.WriteString(`,"digest":"`)
	b.WriteString(m.Digest.String())
	b.WriteString(`","config":`)
	b.Write(cfg)
	b.WriteString(`}`)
	return b.Bytes(), nil
}

// Media types regcap understands.
const (
	ociIndex     = "application/vnd.oci.image.index.v1+json"
	dockerList   = "application/vnd.docker.distribution.manifest.list.v2+json"
	ociManifest  = "application/vnd.oci.image.manifest.v1+json"
	dockerSchema = "application/vnd.docker.distribution.manifest.v2+json"
)

type descriptor struct {
	MediaType string       `json:"mediaType"`
	Digest    string       `json:"digest"`
	Size      int64        `json:"size"`
	Platform  *v1.Platform `json:"platform,omitempty"`
}

type parsedManifest struct {
	SchemaVersion *int         `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        *descriptor  `json:"config"`
	Layers        []descriptor `json:"layers"`
	Manifests     []descriptor `json:"manifests"`
	isIndex       bool
}

// parseManifest checks that m is a schema 2 manifest or index regcap
// understands, and tells which of the two it is.
func parseManifest(ref name.Reference, m *registry.Manifest) (*parsedManifest, error) {
	var pm parsedManifest
	if err := json.Unmarshal(m.Body, &pm); err != nil {
		return nil, errorf(502, ref.Name(), "registry sent a manifest that is not valid JSON: %v", err)
	}
	if pm.SchemaVersion == nil || *pm.SchemaVersion != 2 {
		v := "missing"
		if pm.SchemaVersion != nil {
			v = fmt.Sprint(*pm.SchemaVersion)
		}
		return nil, errorf(415, ref.Name(), "unsupported manifest schemaVersion %s (Docker schema 1 is not supported)", v)
	}
	mt := pm.MediaType
	if mt == "" {
		// OCI allows the field to be absent; the header tells then.
		mt, _, _ = strings.Cut(m.ContentType, ";")
		mt = strings.TrimSpace(mt)
	}
	switch mt {
	case ociIndex, dockerList:
		pm.isIndex = true
	case ociManifest, dockerSchema:
	default:
		// Some registries answer application/json: judge by shape.
		switch {
		case pm.Manifests != nil && pm.Config == nil:
			pm.isIndex = true
		case pm.Config != nil && pm.Manifests == nil && (mt == "" || mt == "application/json"):
		default:
			return nil, errorf(415, ref.Name(), "unsupported manifest media type %q", mt)
		}
	}
	return &pm, nil
}

// pickPlatform returns the first index entry whose os and architecture
// equal want's, and whose variant does too when want has one.
func pickPlatform(ref name.Reference, pm *parsedManifest, want v1.Platform) (v1.Hash, error) {
	var have []string
	for _, d := range pm.Manifests {
		if d.Platform == nil {
			have = append(have, "unknown")
			continue
		}
		p := *d.Platform
		have = append(have, FormatPlatform(p))
		if p.OS == want.OS && p.Architecture == want.Architecture && (want.Variant == "" || p.Variant == want.Variant) {
			h, err := v1.NewHash(d.Digest)
			if err != nil {
				return v1.Hash{}, errorf(502, ref.Name(), "index entry for %s has an invalid digest %q", FormatPlatform(p), d.Digest)
			}
			return h, nil
		}
	}
	if len(have) == 0 {
		return v1.Hash{}, errorf(404, ref.Name(), "index has no manifest for %s: it is empty", FormatPlatform(want))
	}
	return v1.Hash{}, errorf(404, ref.Name(), "index has no manifest for %s; it has %s", FormatPlatform(want), some(have, 16))
}

// some lists at most n of items, and says how many it left out: an index
// may have thousands of entries, and an error message is bounded.
func some(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}
