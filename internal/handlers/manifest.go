package handlers

import (
	"context"

	"github.com/google/go-containerregistry/pkg/name"
)

// manifest answers v1/oci_manifest: the manifest or index exactly as the
// registry sent it, once parseManifest accepts it.
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
