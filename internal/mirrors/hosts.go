package mirrors

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
)

// Bounds on what is read from a configuration file.
const (
	// MaxFileSize bounds every configuration file read.
	MaxFileSize = 1 << 20
	// MaxHosts bounds the [host."…"] entries of one hosts.toml, and the
	// mirrors of one [[registry]].
	MaxHosts = 64
)

// Capabilities of a hosts.toml host, as containerd names them.
type Capabilities uint8

// The capabilities regcap uses; push and referrers are accepted and ignored.
const (
	CapPull Capabilities = 1 << iota
	CapResolve
	capPush
	capReferrers
)

const capAll = CapPull | CapResolve | capPush | capReferrers

// hostEntry is one host of a hosts.toml: an endpoint template (no
// repository, no namespace yet) and its capabilities.
type hostEntry struct {
	ep   Endpoint
	caps Capabilities
}

// hostFields are the per-host settings of hosts.toml, at the top level (for
// server) and under [host."…"].
type hostFields struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	DialTimeout  string         `toml:"dial_timeout"`
}

type hostsFile struct {
	Server       string                `toml:"server"`
	Capabilities []string              `toml:"capabilities"`
	CA           any                   `toml:"ca"`
	Client       any                   `toml:"client"`
	SkipVerify   *bool                 `toml:"skip_verify"`
	Header       map[string]any        `toml:"header"`
	OverridePath bool                  `toml:"override_path"`
	DialTimeout  string                `toml:"dial_timeout"`
	Host         map[string]hostFields `toml:"host"`
}

// hostDirs lists the folders of root that may configure registry (host or
// host:port), in containerd's order: host_port_, host:port, _default.
func hostDirs(root, registry string) []string {
	var dirs []string
	if i := strings.LastIndex(registry, ":"); i > 0 {
		dirs = append(dirs, filepath.Join(root, registry[:i]+"_"+registry[i+1:]+"_"))
	}
	return append(dirs, filepath.Join(root, registry), filepath.Join(root, "_default"))
}

// parseHostsFile parses a hosts.toml whose folder is dir (relative
// certificate paths are relative to it). The [host."…"] entries come in
// file order, then the server (empty host when not set: the caller fills
// in the registry itself).
func parseHostsFile(dir string, b []byte) ([]hostEntry, error) {
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%d bytes, over the %d-byte limit", len(b), MaxFileSize)
	}
	var f hostsFile
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		return nil, err
	}
	// A Go map has no order; the metadata keeps the file's.
	var order []string
	seen := map[string]bool{}
	for _, k := range md.Keys() {
		if len(k) >= 2 && k[0] == "host" && !seen[k[1]] {
			seen[k[1]] = true
			order = append(order, k[1])
		}
	}
	if len(order) > MaxHosts {
		return nil, fmt.Errorf("%d [host] entries, over the limit of %d", len(order), MaxHosts)
	}
	out := make([]hostEntry, 0, len(order)+1)
	for _, h := range order {
		if h == "" {
			return nil, errors.New(`[host.""] has no address`)
		}
		e, err := parseHost(h, dir, f.Host[h])
		if err != nil {
			return nil, fmt.Errorf("[host.%q]: %w", h, err)
		}
		out = append(out, e)
	}
	e, err := parseHost(f.Server, dir, hostFields{
		Capabilities: f.Capabilities, CA: f.CA, Client: f.Client, SkipVerify: f.SkipVerify,
		Header: f.Header, OverridePath: f.OverridePath, DialTimeout: f.DialTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", f.Server, err)
	}
	return append(out, e), nil
}

func parseHost(server, dir string, c hostFields) (hostEntry, error) {
	var e hostEntry
	if server != "" {
		if !strings.HasPrefix(server, "http") {
			server = "https://" + server
		}
		u, err := url.Parse(server)
		if err != nil {
			return e, err
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return e, fmt.Errorf("scheme %q: only http and https", u.Scheme)
		}
		if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return e, errors.New("must be [scheme://]host[:port][/path], no user, query or fragment")
		}
		e.ep.Scheme, e.ep.Host = u.Scheme, strings.ToLower(u.Host)
		e.ep.Insecure = u.Scheme == "http"
		p := "/v2"
		if u.Path != "" {
			p = path.Clean(u.Path)
			if !strings.HasSuffix(p, "/v2") && !c.OverridePath {
				p += "/v2"
			}
		} else if c.OverridePath {
			p = ""
		}
		e.ep.Path = strings.TrimSuffix(p, "/")
	}
	e.ep.SkipVerify = c.SkipVerify
	if len(c.Capabilities) == 0 {
		e.caps = capAll
	}
	for _, s := range c.Capabilities {
		switch strings.ToLower(s) {
		case "pull":
			e.caps |= CapPull
		case "resolve":
			e.caps |= CapResolve
		case "push":
			e.caps |= capPush
		case "referrers":
			e.caps |= capReferrers
		default:
			return e, fmt.Errorf("unknown capability %q", s)
		}
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	switch ca := c.CA.(type) {
	case nil:
	case string:
		e.ep.CAFiles = []string{abs(ca)}
	case []any:
		s, err := strings1(ca, abs)
		if err != nil {
			return e, fmt.Errorf("ca: %w", err)
		}
		e.ep.CAFiles = s
	default:
		return e, fmt.Errorf("ca: a path or a list of paths, not %T", ca)
	}
	switch cl := c.Client.(type) {
	case nil:
	case string:
		e.ep.ClientCerts = [][2]string{{abs(cl), ""}}
	case []any:
		for _, p := range cl {
			switch p := p.(type) {
			case string:
				e.ep.ClientCerts = append(e.ep.ClientCerts, [2]string{abs(p), ""})
			case []any:
				s, err := strings1(p, abs)
				if err != nil || len(s) != 2 {
					return e, fmt.Errorf("client: a pair must be [cert, key]")
				}
				e.ep.ClientCerts = append(e.ep.ClientCerts, [2]string{s[0], s[1]})
			default:
				return e, fmt.Errorf("client: %T is neither a path nor a [cert, key] pair", p)
			}
		}
	default:
		return e, fmt.Errorf("client: a path or a list, not %T", cl)
	}
	if c.Header != nil {
		e.ep.Header = http.Header{}
		for k, v := range c.Header {
			if !validHeaderName(k) {
				return e, fmt.Errorf("header %q: not a valid header name", k)
			}
			switch v := v.(type) {
			case string:
				e.ep.Header[http.CanonicalHeaderKey(k)] = []string{v}
			case []any:
				s, err := strings1(v, nil)
				if err != nil {
					return e, fmt.Errorf("header %q: %w", k, err)
				}
				e.ep.Header[http.CanonicalHeaderKey(k)] = s
			default:
				return e, fmt.Errorf("header %q: a string or a list of strings, not %T", k, v)
			}
			for _, s := range e.ep.Header[http.CanonicalHeaderKey(k)] {
				if strings.ContainsAny(s, "\r\n\x00") {
					return e, fmt.Errorf("header %q: value holds a line break or NUL", k)
				}
			}
		}
	}
	return e, nil
}

func strings1(in []any, f func(string) string) ([]string, error) {
	out := make([]string, len(in))
	for i, v := range in {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%v is not a string", v)
		}
		if f != nil {
			s = f(s)
		}
		out[i] = s
	}
	return out, nil
}

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, c := range k {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	return true
}
