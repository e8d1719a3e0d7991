package handlers

import (
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultPlatform is the worker's own platform, as Kubewarden resolves
// indexes to its host platform.
func DefaultPlatform() v1.Platform {
	return v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return v1.Platform{}, errorf(400, "", "invalid platform %s: expected os/arch[/variant]", quote([]byte(s)))
	}
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, " :\t\r\n") {
			return v1.Platform{}, errorf(400, "", "invalid platform %s: expected os/arch[/variant]", quote([]byte(s)))
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
