// Package handlers implements the three kubewarden/oci host capabilities
// over a registry client, and decides the error code of every failure.
package handlers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Function is a waPC operation of the kubewarden/oci namespace.
type Function string

// The three capabilities.
const (
	ManifestDigest    Function = "v1/manifest_digest"
	OCIManifest       Function = "v1/oci_manifest"
	OCIManifestConfig Function = "v1/oci_manifest_config"
)

// Functions lists every capability, in contract order.
func Functions() []Function { return []Function{ManifestDigest, OCIManifest, OCIManifestConfig} }

// Subject is the NATS subject the function is served on.
func (f Function) Subject(prefix string) string {
	return prefix + ".oci." + strings.ReplaceAll(string(f), "/", ".")
}

// Name is the operation without its version, as used in cache keys and
// metrics: "manifest_digest".
func (f Function) Name() string { return strings.TrimPrefix(string(f), "v1/") }

// MaxPayload is the largest request payload accepted.
const MaxPayload = 4 << 10

// Request is a decoded capability request.
type Request struct {
	Function Function
	Ref      name.Reference
	// Platform is the platform an index resolves to; only for
	// OCIManifestConfig.
	Platform v1.Platform
}

// Key is the cache key of the request's answer. It carries no credentials.
func (r Request) Key() string {
	if r.Function == OCIManifestConfig {
		return "regcap:v1:" + r.Function.Name() + ":" + FormatPlatform(r.Platform) + ":" + r.Ref.Name()
	}
	return "regcap:v1:" + r.Function.Name() + ":" + r.Ref.Name()
}

// Immutable reports whether the answer cannot change: a digest reference.
func (r Request) Immutable() bool {
	_, ok := r.Ref.(name.Digest)
	return ok
}

// ParseReference decodes a waPC payload: a JSON string holding an image
// reference, parsed like Docker does. Every failure is a 400 *Error.
func ParseReference(payload []byte) (name.Reference, error) {
	switch {
	case len(payload) == 0:
		return nil, Errorf(400, "", "empty payload: expected a JSON string such as \"busybox:latest\"")
	case len(payload) > MaxPayload:
		return nil, Errorf(400, "", "payload of %d bytes is over the %d-byte limit", len(payload), MaxPayload)
	}
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) == 0 || trimmed[0] != '"' {
		return nil, Errorf(400, "", "payload is not a JSON string: %s", quote(payload))
	}
	var s string
	if err := json.Unmarshal(payload, &s); err != nil {
		return nil, Errorf(400, "", "payload is not a JSON string: %s", quote(payload))
	}
	if s == "" {
		return nil, Errorf(400, "", "empty image reference")
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, Errorf(400, "", "invalid image reference %s", quote([]byte(s)))
	}
	// The parser checks the repository's length before Docker Hub's
	// implicit "library/" is added: a name that fits only without it has a
	// normalised form (the cache key, the registry path) that is invalid.
	if r := ref.Context().RepositoryStr(); len(r) > maxRepository {
		return nil, Errorf(400, "", "invalid image reference %s: repository %s is over %d characters", quote([]byte(s)), quote([]byte(r)), maxRepository)
	}
	// Every registry in use digests with sha256; accepting another
	// algorithm would mean answering bodies nobody verified.
	if d, ok := ref.(name.Digest); ok && !strings.HasPrefix(d.DigestStr(), "sha256:") {
		return nil, Errorf(400, "", "unsupported digest algorithm in %s: only sha256 digests are accepted", quote([]byte(s)))
	}
	return ref, nil
}

// maxRepository is the longest repository path, as go-containerregistry
// and distribution accept it.
const maxRepository = 255

// quote shows untrusted input in a message: one line, bounded, valid UTF-8.
func quote(b []byte) string {
	const max = 64
	s := string(b)
	if len(s) > max {
		s = s[:max]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return fmt.Sprintf("%q", s)
}

// DefaultPlatform is the worker's own platform, as Kubewarden resolves
// indexes to its host platform.
func DefaultPlatform() v1.Platform {
	return v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return v1.Platform{}, Errorf(400, "", "invalid platform %s: expected os/arch[/variant]", quote([]byte(s)))
	}
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, " :\t\r\n") {
			return v1.Platform{}, Errorf(400, "", "invalid platform %s: expected os/arch[/variant]", quote([]byte(s)))
		}
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// FormatPlatform is the inverse of ParsePlatform.
func FormatPlatform(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
