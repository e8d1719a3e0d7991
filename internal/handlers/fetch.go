package handlers

import (
	"context"

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
