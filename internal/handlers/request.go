package handlers

import (
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/contract"
)

// Request is a decoded capability request.
type Request struct {
	Function contract.Function
	Ref      name.Reference
	// Platform is the platform an index resolves to; only for
	// OCIManifestConfig.
	Platform v1.Platform
}

// Key is the cache key of the request's answer. It carries no credentials.
func (r Request) Key() string {
	if r.Function == contract.OCIManifestConfig {
		return "regcap:v2:" + r.Function.Name() + ":" + FormatPlatform(r.Platform) + ":" + r.Ref.Name()
	}
	return "regcap:v2:" + r.Function.Name() + ":" + r.Ref.Name()
}

// Immutable reports whether the answer cannot change: a digest reference.
func (r Request) Immutable() bool {
	_, ok := r.Ref.(name.Digest)
	return ok
}

// ParseRequest decodes a request for fn: payload is the waPC payload (a
// JSON string holding an image reference), platform the Regcap-Platform
// header ("" for def). Every failure is a 400 *contract.Error.
func ParseRequest(fn contract.Function, payload []byte, platform string, def v1.Platform) (Request, error) {
	if _, ok := contract.ParseOperation(string(fn)); !ok {
		return Request{}, errorf(400, "", "unknown function %q", fn)
	}
	ref, err := ParseReference(payload)
	if err != nil {
		return Request{}, err
	}
	req := Request{Function: fn, Ref: ref}
	if fn != contract.OCIManifestConfig {
		return req, nil
	}
	req.Platform = def
	if platform != "" {
		if req.Platform, err = ParsePlatform(platform); err != nil {
			// ParsePlatform knows no image; the answer names it.
			return Request{}, errorf(400, ref.Name(), "%s", err.(*contract.Error).Message)
		}
	}
	return req, nil
}
