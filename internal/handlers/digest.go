package handlers

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/internal/registry"
)

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
// spend more of the quota, a policy refusal (ErrDenied) or the registry
// refusing access (401, 403) would only be repeated, and a registry that
// announced another digest than the one asked for is not asked again.
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
