package mirrors

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// pull-from-mirror values.
const (
	pullAll        = "all"
	pullDigestOnly = "digest-only"
	pullTagOnly    = "tag-only"
)

// MaxDropIns bounds the registries.conf.d files read.
const MaxDropIns = 256

type confMirror struct {
	Location       string `toml:"location"`
	Insecure       bool   `toml:"insecure"`
	PullFromMirror string `toml:"pull-from-mirror"`
}

type confRegistry struct {
	Prefix             string       `toml:"prefix"`
	Location           string       `toml:"location"`
	Insecure           bool         `toml:"insecure"`
	Blocked            bool         `toml:"blocked"`
	MirrorByDigestOnly bool         `toml:"mirror-by-digest-only"`
	PullFromMirror     string       `toml:"pull-from-mirror"`
	Mirrors            []confMirror `toml:"mirror"`
	source             string
}

type confFile struct {
	Registries []confRegistry `toml:"registry"`
	// v1 tables, refused: drop-ins must be v2 and regcap reads v2 only.
	V1 map[string]any `toml:"registries"`
}

// registriesConf is a parsed registries.conf with its drop-ins merged: one
// [[registry]] per prefix.
type registriesConf struct {
	regs []confRegistry
}

// parseRegistriesConf parses one file (source names it in errors and
// endpoints).
func parseRegistriesConf(source string, b []byte) ([]confRegistry, error) {
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%d bytes, over the %d-byte limit", len(b), MaxFileSize)
	}
	var f confFile
	if _, err := toml.Decode(string(b), &f); err != nil {
		return nil, err
	}
	if f.V1 != nil {
		return nil, errors.New("[registries.*] is the v1 format; regcap reads v2 ([[registry]]) only")
	}
	for i := range f.Registries {
		r := &f.Registries[i]
		r.source = source
		var err error
		if r.Location, err = parseLocation(r.Location); err != nil {
			return nil, err
		}
		if r.Prefix == "" {
			if r.Location == "" {
				return nil, fmt.Errorf("[[registry]] %d: both location and prefix are unset", i+1)
			}
			r.Prefix = r.Location
		} else {
			if r.Prefix, err = parseLocation(r.Prefix); err != nil {
				return nil, err
			}
			if strings.HasPrefix(r.Prefix, "*.") {
				if strings.ContainsAny(r.Prefix[2:], "/@:*") {
					return nil, fmt.Errorf("[[registry]] prefix %q: a wildcard prefix is *.host, nothing more", r.Prefix)
				}
			} else if r.Location == "" {
				return nil, fmt.Errorf("[[registry]] prefix %q: location is unset and the prefix is not *.host", r.Prefix)
			}
		}
		if strings.Contains(strings.TrimPrefix(r.Prefix, "*."), "*") {
			return nil, fmt.Errorf("[[registry]] prefix %q: a wildcard only as *. at the start", r.Prefix)
		}
		if r.PullFromMirror != "" {
			return nil, fmt.Errorf("[[registry]] %q: pull-from-mirror is for mirrors only", r.Prefix)
		}
		if len(r.Mirrors) > MaxHosts {
			return nil, fmt.Errorf("[[registry]] %q: %d mirrors, over the limit of %d", r.Prefix, len(r.Mirrors), MaxHosts)
		}
		for j := range r.Mirrors {
			m := &r.Mirrors[j]
			if m.Location, err = parseLocation(m.Location); err != nil {
				return nil, err
			}
			if m.Location == "" {
				return nil, fmt.Errorf("[[registry]] %q: a mirror has no location", r.Prefix)
			}
			if r.MirrorByDigestOnly && m.PullFromMirror != "" {
				return nil, fmt.Errorf("[[registry]] %q: mirror-by-digest-only and pull-from-mirror on %q at once", r.Prefix, m.Location)
			}
			switch m.PullFromMirror {
			case "", pullAll, pullDigestOnly, pullTagOnly:
			default:
				return nil, fmt.Errorf("mirror %q: pull-from-mirror %q is not all, digest-only or tag-only", m.Location, m.PullFromMirror)
			}
		}
	}
	return f.Registries, nil
}

func parseLocation(s string) (string, error) {
	t := strings.TrimRight(s, "/")
	if strings.HasPrefix(t, "http://") || strings.HasPrefix(t, "https://") {
		return "", fmt.Errorf("location %q: URI schemes are not supported", s)
	}
	if strings.ContainsAny(t, " \t\r\n?#") {
		return "", fmt.Errorf("location %q: not a registry[/namespace] name", s)
	}
	return t, nil
}

// merge applies files in order: a later [[registry]] with the same prefix
// replaces an earlier one, new prefixes are added; within one file the
// first of a prefix wins (as containers/image does).
func merge(files [][]confRegistry) registriesConf {
	byPrefix := map[string]int{}
	var out []confRegistry
	for _, f := range files {
		inFile := map[string]bool{}
		for _, r := range f {
			if inFile[r.Prefix] {
				continue
			}
			inFile[r.Prefix] = true
			if i, ok := byPrefix[r.Prefix]; ok {
				out[i] = r
				continue
			}
			byPrefix[r.Prefix] = len(out)
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Prefix < out[j].Prefix })
	return registriesConf{regs: out}
}

// matchPrefix returns the length of prefix's match in ref (a
// registry/repository[:tag|@digest] string), or -1.
func matchPrefix(ref, prefix string) int {
	if strings.HasPrefix(prefix, "*.") {
		i := strings.Index(ref, prefix[1:])
		if i == -1 || strings.Contains(ref[:i], "/") {
			return -1
		}
		i += len(prefix) - 1
		if i == len(ref) {
			return i
		}
		switch ref[i] {
		case ':', '/', '@':
			return i
		}
		return -1
	}
	if !strings.HasPrefix(ref, prefix) {
		return -1
	}
	if len(ref) == len(prefix) {
		return len(prefix)
	}
	switch ref[len(prefix)] {
	case ':', '/', '@':
		return len(prefix)
	}
	return -1
}

// find returns the [[registry]] with the longest matching prefix.
func (c registriesConf) find(ref string) (*confRegistry, int) {
	best, bestLen, at := -1, 0, 0
	for i, r := range c.regs {
		if n := matchPrefix(ref, r.Prefix); n != -1 && len(r.Prefix) > bestLen {
			best, bestLen, at = i, len(r.Prefix), n
		}
	}
	if best == -1 {
		return nil, 0
	}
	return &c.regs[best], at
}
