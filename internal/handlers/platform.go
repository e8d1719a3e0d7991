package handlers

import (
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/contract"
)

// DefaultPlatform is the worker's own platform, as Kubewarden resolves
// indexes to its host platform.
func DefaultPlatform() v1.Platform {
	return v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
}

// ParsePlatform parses a Regcap-Platform value, "os/arch[/variant]", as
// the OCI image index names platforms: os and architecture are GOOS and
// GOARCH values (linux, windows, amd64, arm64, ppc64le, s390x, riscv64),
// the variant one such as v7 or v8. Each part is one or more of
// [a-z0-9_.-], the whole at most contract.MaxPlatform bytes. Every
// failure is a 400 *contract.Error saying what is wrong, with the input
// quoted and bounded.
func ParsePlatform(s string) (v1.Platform, error) {
	if len(s) > contract.MaxPlatform {
		// Before anything else looks at s: a header may be megabytes.
		return v1.Platform{}, errorf(400, "", "invalid platform %s: %d bytes, over the %d-byte limit", quote(s), len(s), contract.MaxPlatform)
	}
	parts := strings.Split(s, "/")
	switch n := len(parts); {
	case n == 1:
		return v1.Platform{}, errorf(400, "", "invalid platform %s: no \"/\" in it, expected os/arch[/variant]", quote(s))
	case n > 3:
		return v1.Platform{}, errorf(400, "", "invalid platform %s: %d parts, expected os/arch[/variant]", quote(s), n)
	}
	names := [...]string{"os", "architecture", "variant"}
	for i, part := range parts {
		what := names[i]
		if part == "" {
			return v1.Platform{}, errorf(400, "", "invalid platform %s: the %s is empty, expected os/arch[/variant]", quote(s), what)
		}
		if !platformPart(part) {
			return v1.Platform{}, errorf(400, "", "invalid platform %s: %s %s must match [a-z0-9_.-]+", quote(s), what, quote(part))
		}
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// platformPart reports whether s is made of [a-z0-9_.-] only. Neither
// "/" nor ":" can be among them: the platform sits between colons in a
// cache key.
func platformPart(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// FormatPlatform is the inverse of ParsePlatform.
func FormatPlatform(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
