package worker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/netutil"
)

// certFiles serves the certificate in a cert and key file pair, read
// again when either file changes (cert-manager rotates them in place), so
// that a rotation needs no restart. A pair that fails to load keeps the
// previous certificate in use.
type certFiles struct {
	cert, key string

	mu      sync.Mutex
	current *tls.Certificate
	stamp   [2]time.Time
}

func newCertFiles(cert, key string) (*certFiles, error) {
	c := &certFiles{cert: cert, key: key}
	if _, err := c.get(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetCertificate is a tls.Config GetCertificate function.
func (c *certFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.get() }

func (c *certFiles) get() (*tls.Certificate, error) {
	cs, cerr := os.Stat(c.cert)
	ks, kerr := os.Stat(c.key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cerr == nil && kerr == nil {
		stamp := [2]time.Time{cs.ModTime(), ks.ModTime()}
		if c.current == nil || stamp != c.stamp {
			pair, err := tls.LoadX509KeyPair(c.cert, c.key)
			switch {
			case err == nil:
				c.current, c.stamp = &pair, stamp
			case c.current == nil:
				return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
			}
		}
	}
	if c.current == nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", errors.Join(cerr, kerr))
	}
	return c.current, nil
}

// serverTLS is the HTTP front's TLS configuration: TLS 1.3 at least (as
// Gatekeeper requires), the rotating certificate, and with a client CA,
// client certificates required and verified against it.
func serverTLS(cfg *Config) (*tls.Config, error) {
	certs, err := newCertFiles(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, err
	}
	t := &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: certs.GetCertificate}
	if cfg.ClientCA != "" {
		pem, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("--client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--client-ca %s: no PEM certificate in it", cfg.ClientCA)
		}
		t.ClientCAs, t.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return t, nil
}

// httpListener opens --http-addr: TLS, or plain HTTP when --http-plain
// asks for it on a loopback address; at most --http-max-conns
// connections at once, counted before the TLS handshake, so that
// connections left half-open count too.
func httpListener(cfg *Config) (net.Listener, error) {
	var t *tls.Config
	switch {
	case cfg.HTTPPlain && (cfg.TLSCert != "" || cfg.TLSKey != ""):
		return nil, errors.New("--http-plain and --tls-cert/--tls-key: choose one")
	case cfg.HTTPPlain:
		host, _, err := net.SplitHostPort(cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("--http-addr: %w", err)
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("--http-plain serves plain HTTP on loopback addresses only, not %s: give --tls-cert and --tls-key", cfg.HTTPAddr)
		}
	case cfg.TLSCert == "" || cfg.TLSKey == "":
		return nil, errors.New("--http-addr needs --tls-cert and --tls-key (or --http-plain on a loopback address)")
	default:
		var err error
		if t, err = serverTLS(cfg); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	ln = netutil.LimitListener(ln, cfg.HTTPMaxConns)
	if t != nil {
		ln = tls.NewListener(ln, t)
	}
	return ln, nil
}
