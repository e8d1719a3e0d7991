package mirrors

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Endpoint is one place to ask for a repository's manifests and blobs.
type Endpoint struct {
	// Scheme is "https" or "http".
	Scheme string
	// Host is host[:port] of the endpoint.
	Host string
	// Path is the API root, "/v2" unless hosts.toml says override_path.
	Path string
	// Repository is the repository's name on this endpoint (registries.conf
	// location rewriting may change it).
	Repository string
	// Namespace is the logical registry, sent as ?ns= to a host that is
	// not the registry itself (hosts.toml only, as containerd does).
	Namespace string
	// Header is sent with every request to this endpoint.
	Header http.Header
	// CAFiles, ClientCerts (cert, key; key "" means in the cert file) and
	// SkipVerify are hosts.toml's TLS settings for this host.
	CAFiles     []string
	ClientCerts [][2]string
	SkipVerify  *bool
	// Insecure allows plain HTTP and unverified TLS (registries.conf
	// insecure = true, or an http:// host in hosts.toml).
	Insecure bool
	// Mirror is set when Host is not the logical registry itself.
	Mirror bool
	// Source names the file that configured this endpoint; "" for the
	// default (the registry itself, nothing configured).
	Source string
}

// URL is the endpoint's API root, e.g. https://mirror:5000/v2.
func (e Endpoint) URL() string { return e.Scheme + "://" + e.Host + e.Path }

func (e Endpoint) String() string { return e.URL() }

// Sentinel errors, matched with errors.Is.
var (
	// ErrBlocked: registries.conf blocks the reference. Answered 403;
	// nothing is contacted.
	ErrBlocked = errors.New("blocked by registries.conf")
	// ErrNoEndpoint: no endpoint may be asked (--mirrors-only and no
	// mirror configured, or no hosts.toml host has the capability the
	// request needs).
	ErrNoEndpoint = errors.New("no endpoint configured")
	// ErrConfig: a configuration file could not be read or parsed and no
	// earlier good version of it is at hand.
	ErrConfig = errors.New("invalid mirror configuration")
)

// BlockedError says which registries.conf entry blocked a reference.
type BlockedError struct {
	Reference string // registry/repository
	Prefix    string
	Source    string
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("%s is blocked by [[registry]] prefix %q in %s", e.Reference, e.Prefix, e.Source)
}

// Is makes errors.Is(err, ErrBlocked) true.
func (e *BlockedError) Is(target error) bool { return target == ErrBlocked }

// NoEndpointError says why no endpoint is left for a request.
type NoEndpointError struct {
	Reference string
	Reason    string
}

func (e *NoEndpointError) Error() string {
	return fmt.Sprintf("no endpoint for %s: %s", e.Reference, e.Reason)
}

// Is makes errors.Is(err, ErrNoEndpoint) true.
func (e *NoEndpointError) Is(target error) bool { return target == ErrNoEndpoint }

// ConfigError is a file that could not be used.
type ConfigError struct {
	Path string
	Err  error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }

// Unwrap returns the cause.
func (e *ConfigError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

// Hub names: Docker Hub is one registry under every spelling.
const (
	hubName = "docker.io"
	hubHost = "registry-1.docker.io"
)

// Canonical returns the name under which registry is configured and
// keyed: Docker Hub's spellings (index.docker.io, registry-1.docker.io)
// become docker.io; hosts are lower-cased.
func Canonical(registry string) string {
	r := strings.ToLower(registry)
	switch r {
	case "index.docker.io", hubHost, hubName:
		return hubName
	}
	return r
}

// sameHost reports whether endpoint host h is the registry reg itself.
func sameHost(h, reg string) bool {
	return Canonical(h) == Canonical(reg)
}

// defaultHost is the host a registry is reached at when nothing else is
// configured.
func defaultHost(reg string) string {
	if reg == hubName {
		return hubHost
	}
	return reg
}
