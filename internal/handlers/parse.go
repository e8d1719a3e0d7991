package handlers

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regcap/regcap/internal/registry"
)

// genericJSON is what some registries send as the Content-Type of any
// JSON body, manifests included. go-containerregistry's types has no
// constant for it: it is not an image media type.
const genericJSON types.MediaType = "application/json"

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
	switch types.MediaType(mt) {
	case types.OCIImageIndex, types.DockerManifestList:
		pm.isIndex = true
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		// Some registries answer application/json: judge by shape.
		switch {
		case pm.Manifests != nil && pm.Config == nil:
			pm.isIndex = true
		case pm.Config != nil && pm.Manifests == nil && (mt == "" || types.MediaType(mt) == genericJSON):
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
