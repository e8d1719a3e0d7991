package mirrors

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// maxTLSHosts bounds the hosts whose TLS settings are remembered.
const maxTLSHosts = 1024

type hostTLS struct {
	ca         []string
	certs      [][2]string
	skipVerify *bool
}

// rememberTLS keeps e's TLS settings for ApplyTLS. r.mu is held.
func (r *Resolver) rememberTLS(e Endpoint) {
	if len(e.CAFiles) == 0 && len(e.ClientCerts) == 0 && e.SkipVerify == nil {
		return
	}
	if _, ok := r.tls[e.Host]; !ok && len(r.tls) >= maxTLSHosts {
		clear(r.tls)
	}
	r.tls[e.Host] = hostTLS{ca: e.CAFiles, certs: e.ClientCerts, skipVerify: e.SkipVerify}
}

// ApplyTLS sets, in c, the TLS settings hosts.toml gives host (ca,
// client, skip_verify), as containerd does: CAs are added to c's roots
// (the system's when c has none). Hosts the configuration never named are
// left as they are. It is a registry.WithTLSHook function; it is called
// when a host's transport is built, after Endpoints named the host.
func (r *Resolver) ApplyTLS(host string, c *tls.Config) error {
	r.mu.Lock()
	s, ok := r.tls[host]
	r.mu.Unlock()
	if !ok {
		return nil
	}
	if s.skipVerify != nil {
		c.InsecureSkipVerify = *s.skipVerify //nolint:gosec // the operator's hosts.toml says so
	}
	if len(s.ca) > 0 {
		if c.RootCAs == nil {
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			c.RootCAs = pool
		} else {
			c.RootCAs = c.RootCAs.Clone()
		}
		for _, f := range s.ca {
			b, err := readBounded(f)
			if err != nil {
				return &ConfigError{Path: f, Err: fmt.Errorf("ca: %w", err)}
			}
			if !c.RootCAs.AppendCertsFromPEM(b) {
				return &ConfigError{Path: f, Err: fmt.Errorf("ca: no PEM certificate")}
			}
		}
	}
	for _, p := range s.certs {
		cert, err := readBounded(p[0])
		if err != nil {
			return &ConfigError{Path: p[0], Err: fmt.Errorf("client: %w", err)}
		}
		key := cert
		if p[1] != "" {
			if key, err = readBounded(p[1]); err != nil {
				return &ConfigError{Path: p[1], Err: fmt.Errorf("client key: %w", err)}
			}
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			// The parser's message names no key material.
			return &ConfigError{Path: p[0], Err: fmt.Errorf("client: %w", err)}
		}
		c.Certificates = append(c.Certificates, pair)
	}
	return nil
}
