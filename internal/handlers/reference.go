package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/contract"
)

// ParseReference decodes a waPC payload: a JSON string holding an image
// reference, parsed like Docker does. Every failure is a 400 *Error.
func ParseReference(payload []byte) (name.Reference, error) {
	switch {
	case len(payload) == 0:
		return nil, errorf(400, "", "empty payload: expected a JSON string such as \"busybox:latest\"")
	case len(payload) > contract.MaxPayload:
		return nil, errorf(400, "", "payload of %d bytes is over the %d-byte limit", len(payload), contract.MaxPayload)
	}
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) == 0 || trimmed[0] != '"' {
		return nil, errorf(400, "", "payload is not a JSON string: %s", quote(string(payload)))
	}
	var s string
	if err := json.Unmarshal(payload, &s); err != nil {
		return nil, errorf(400, "", "payload is not a JSON string: %s", quote(string(payload)))
	}
	if s == "" {
		return nil, errorf(400, "", "empty image reference")
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		if part := diagnose(s); part != "" {
			return nil, errorf(400, "", "invalid image reference %s: %s", quote(s), part)
		}
		return nil, errorf(400, "", "invalid image reference %s", quote(s))
	}
	if ref, err = normalise(ref); err != nil {
		return nil, errorf(400, "", "invalid image reference %s: %v", quote(s), err)
	}
	// The parser checks the repository's length before Docker Hub's
	// implicit "library/" is added: a name that fits only without it has a
	// normalised form (the cache key, the registry path) that is invalid.
	if r := ref.Context().RepositoryStr(); len(r) > maxRepository {
		return nil, errorf(400, "", "invalid image reference %s: repository %s is over %d characters", quote(s), quote(r), maxRepository)
	}
	return ref, nil
}

// The distribution reference grammar, which go-containerregistry's
// parser does not hold references to: it passes "a/../b", "a//b" or
// "-a" to the registry as they are.
var (
	pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	tagGrammar    = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)
	digestGrammar = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// normalise holds ref to the distribution grammar, before any network
// activity, and lower-cases its registry host, so that LOCALHOST:5000 and
// localhost:5000 are one registry and one cache key (registry-1.docker.io
// and docker.io too).
func normalise(ref name.Reference) (name.Reference, error) {
	host := ref.Context().RegistryStr()
	h, port, hasPort := host, "", false
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		h, port, hasPort = host[:i], host[i+1:], true
	}
	if h == "" {
		return nil, fmt.Errorf("registry %s has no host", quote(host))
	}
	if !hostGrammar.MatchString(host) {
		return nil, fmt.Errorf("registry host %s is not a host name or [IPv6] address with an optional port", quote(host))
	}
	if hasPort {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
			return nil, fmt.Errorf("registry port %s is not a number from 1 to 65535", quote(port))
		}
	}
	for _, c := range strings.Split(ref.Context().RepositoryStr(), "/") {
		if !pathComponent.MatchString(c) {
			return nil, errors.New(componentProblem(c))
		}
	}
	switch r := ref.(type) {
	case name.Tag:
		if !tagGrammar.MatchString(r.TagStr()) {
			return nil, errors.New(tagProblem(r.TagStr()))
		}
	case name.Digest:
		// Every registry in use digests with sha256; accepting another
		// algorithm would mean answering bodies nobody verified.
		if !strings.HasPrefix(r.DigestStr(), "sha256:") {
			return nil, fmt.Errorf("unsupported digest algorithm: only sha256 digests are accepted")
		}
		if !digestGrammar.MatchString(r.DigestStr()) {
			return nil, fmt.Errorf("digest %s must be sha256: and 64 lower-case hex digits", quote(r.DigestStr()))
		}
	}
	lower := strings.ToLower(host)
	if lower == "registry-1.docker.io" {
		// Docker Hub's API host is Docker Hub: one registry, one cache key.
		lower = name.DefaultRegistry
	}
	if lower != host {
		sep := ":"
		if _, ok := ref.(name.Digest); ok {
			sep = "@"
		}
		s := lower + "/" + ref.Context().RepositoryStr() + sep + ref.Identifier()
		r, err := name.ParseReference(s)
		if err != nil {
			// Only Docker Hub spelt in capitals gets here: lower-cased, it
			// gains the implicit "library/" and may be too long. The
			// parser's error quotes the whole reference; ours is bounded.
			if part := diagnose(s); part != "" {
				return nil, errors.New(part)
			}
			return nil, fmt.Errorf("%s does not parse once its host is lower-cased", quote(s))
		}
		return r, nil
	}
	return ref, nil
}

// componentProblem says in words why c, a repository path component,
// breaks the distribution grammar [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*.
func componentProblem(c string) string {
	what := "repository path component " + quote(c)
	switch {
	case c == "":
		return what + " is empty: the path has two slashes in a row, or one at an end"
	case c == "." || c == "..":
		return what + " is not allowed: a path has no . or .. components"
	case strings.ToLower(c) != c:
		return what + " must be lower case"
	}
	for _, r := range c {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Sprintf("%s holds %q: only lower-case letters, digits and the separators . _ __ - are allowed", what, r)
		}
	}
	if first, last := c[0], c[len(c)-1]; !isAlnum(first) || !isAlnum(last) {
		return what + " must start and end with a lower-case letter or a digit"
	}
	return what + " has separators in a row: use one ., one or two _, or dashes, between letters or digits"
}

// tagProblem says in words why t breaks the tag grammar
// [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
func tagProblem(t string) string {
	what := "tag " + quote(t)
	switch {
	case t == "":
		return what + " is empty: drop the : or give a tag"
	case len(t) > 128:
		return what + " is over 128 characters"
	case t[0] == '.' || t[0] == '-':
		return what + " must start with a letter, a digit or _"
	}
	for _, r := range t {
		if !(isAlnum(byte(r)) && r < 0x80 || r >= 'A' && r <= 'Z' || r == '_' || r == '.' || r == '-') {
			return fmt.Sprintf("%s holds %q: only letters, digits, _, . and - are allowed", what, r)
		}
	}
	return what + " must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
}

func isAlnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

// hostGrammar is a registry host: a DNS name or a bracketed IPv6
// address, and an optional port.
var hostGrammar = regexp.MustCompile(`^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]*)?$`)

// diagnose names the part of s, a reference the parser refused, that is
// wrong: digest, tag, host, port, repository component or the
// repository's length, the way Docker splits a reference. "" when it
// cannot tell.
func diagnose(s string) string {
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		if d := rest[i+1:]; !digestGrammar.MatchString(d) {
			return fmt.Sprintf("digest %s must be sha256: and 64 lower-case hex digits", quote(d))
		}
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		if t := rest[i+1:]; !tagGrammar.MatchString(t) {
			return tagProblem(t)
		}
		rest = rest[:i]
	}
	parts := strings.Split(rest, "/")
	host := name.DefaultRegistry
	if first := parts[0]; len(parts) > 1 && (strings.ContainsAny(first, ".:[") || first == "localhost" || first != strings.ToLower(first)) {
		if !hostGrammar.MatchString(first) {
			return fmt.Sprintf("registry host %s is not a host name or [IPv6] address with an optional port", quote(first))
		}
		host, parts = first, parts[1:]
	}
	for _, c := range parts {
		if !pathComponent.MatchString(c) {
			return componentProblem(c)
		}
	}
	r := strings.Join(parts, "/")
	if len(parts) == 1 && isDockerHub(host) {
		// Counted as the parser counts it for a digest reference, and as
		// the normalised form would be.
		r = "library/" + r
	}
	if len(r) > maxRepository {
		return fmt.Sprintf("repository %s is over %d characters", quote(r), maxRepository)
	}
	return ""
}

// isDockerHub reports whether host, as written in a reference, is Docker
// Hub, where a one-component repository gets an implicit "library/".
func isDockerHub(host string) bool {
	r, err := name.NewRegistry(strings.ToLower(host))
	return err == nil && r.RegistryStr() == name.DefaultRegistry
}

// maxRepository is the longest repository path, as go-containerregistry
// and distribution accept it.
const maxRepository = 255

// quote shows untrusted input in a message: one line, bounded, valid
// UTF-8. It cuts s before anything is copied, so that the cost of
// quoting a large input does not grow with it.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return fmt.Sprintf("%q", s)
}
