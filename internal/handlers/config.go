package handlers

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// manifestConfig answers v1/oci_manifest_config: the image manifest (an
// index resolved to want), its digest and its config blob.
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
