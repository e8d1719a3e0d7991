package registry

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"go.yaml.in/yaml/v3"
)

// Sources is Kubewarden's sources.yaml: registries reached without TLS
// verification, and extra certificate authorities per registry.
type Sources struct {
	insecure    map[string]bool
	authorities map[string]*x509.CertPool
	certs       map[string][]*x509.Certificate
}

// Authority is one entry of source_authorities: a certificate given inline
// (Type "Data") or as a file (Type "Path"), PEM or DER.
type Authority struct {
	Type string `yaml:"type" json:"type"`
	Path string `yaml:"path,omitempty" json:"path,omitempty"`
	Data string `yaml:"data,omitempty" json:"data,omitempty"`
}

type sourcesFile struct {
	InsecureSources   []string               `yaml:"insecure_sources"`
	SourceAuthorities map[string][]Authority `yaml:"source_authorities"`
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// LoadSources reads a sources.yaml (or its JSON form). An empty path gives
// empty Sources. Unknown keys are an error naming the key, so that a typo
// does not silently turn TLS verification back on.
func LoadSources(path string) (*Sources, error) {
	if path == "" {
		return &Sources{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sources file: %w", err)
	}
	s, err := ParseSources(b)
	if err != nil {
		return nil, fmt.Errorf("sources file %s: %w", path, err)
	}
	return s, nil
}

// ParseSources parses sources.yaml content; JSON is valid YAML and is
// accepted as is.
func ParseSources(b []byte) (*Sources, error) {
	var f sourcesFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		// yaml.v3 says "field X not found in type registry.sourcesFile";
		// operators know keys, not Go types.
		msg := unknownField.ReplaceAllString(err.Error(), "unknown key $1")
		return nil, fmt.Errorf("%s (known keys: insecure_sources, source_authorities; entries: type, path, data)", msg)
	}
	s := &Sources{insecure: map[string]bool{}, authorities: map[string]*x509.CertPool{}, certs: map[string][]*x509.Certificate{}}
	for _, h := range f.InsecureSources {
		k, err := sourceKey(h)
		if err != nil {
			return nil, fmt.Errorf("insecure_sources: %w", err)
		}
		s.insecure[k] = true
	}
	for h, list := range f.SourceAuthorities {
		k, err := sourceKey(h)
		if err != nil {
			return nil, fmt.Errorf("source_authorities: %w", err)
		}
		for i, a := range list {
			certs, err := a.certificates()
			if err != nil {
				return nil, fmt.Errorf("source_authorities[%q][%d]: %w", h, i, err)
			}
			s.certs[k] = append(s.certs[k], certs...)
		}
	}
	for k, certs := range s.certs {
		// Added to the system roots, as Kubewarden does: a custom CA for
		// one registry must not stop public certificates from working.
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
		s.authorities[k] = pool
	}
	return s, nil
}

// sourceKey normalises a host[:port] the way image references are, so
// that "docker.io" and "index.docker.io" are one key.
func sourceKey(h string) (string, error) {
	h = strings.TrimSpace(h)
	r, err := name.NewRegistry(h, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("%q is not a host[:port]: %w", h, err)
	}
	return r.RegistryStr(), nil
}

func (a Authority) certificates() ([]*x509.Certificate, error) {
	var raw []byte
	switch strings.ToLower(a.Type) {
	case "path":
		if a.Path == "" {
			return nil, errors.New(`type Path needs "path"`)
		}
		b, err := os.ReadFile(a.Path)
		if err != nil {
			return nil, err
		}
		raw = b
	case "data":
		if a.Data == "" {
			return nil, errors.New(`type Data needs "data"`)
		}
		raw = []byte(a.Data)
	default:
		return nil, fmt.Errorf("type %q: want Path or Data", a.Type)
	}
	return parseCertificates(raw)
}

// parseCertificates reads every PEM CERTIFICATE block of raw, or raw as
// one DER certificate when it holds no PEM.
func parseCertificates(raw []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := raw
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		return certs, nil
	}
	c, err := x509.ParseCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("neither a PEM certificate nor DER: %w", err)
	}
	return []*x509.Certificate{c}, nil
}

// Insecure reports whether host (host[:port], as in an image reference) is
// listed in insecure_sources.
func (s *Sources) Insecure(host string) bool {
	if s == nil {
		return false
	}
	k, err := sourceKey(host)
	return err == nil && s.insecure[k]
}

// RootCAs returns the system roots plus the host's source_authorities, or
// nil (system roots) when none are configured for it.
func (s *Sources) RootCAs(host string) *x509.CertPool {
	if s == nil {
		return nil
	}
	k, err := sourceKey(host)
	if err != nil {
		return nil
	}
	return s.authorities[k]
}
