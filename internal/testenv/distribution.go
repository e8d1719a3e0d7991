package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// CA is a certificate authority made by a test.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// NewCA makes a fresh CA.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	Must(t, err, "CA key")
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "regcap test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	Must(t, err, "CA certificate")
	cert, err := x509.ParseCertificate(der)
	Must(t, err, "CA certificate")
	return &CA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Issue returns a server certificate and key (PEM) for hosts (DNS names
// or IP addresses), signed by the CA.
func (ca *CA) Issue(t testing.TB, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	return ca.issue(t, x509.ExtKeyUsageServerAuth, hosts...)
}

// IssueClient returns a client certificate and key (PEM) for name.
func (ca *CA) IssueClient(t testing.TB, name string) (certPEM, keyPEM []byte) {
	t.Helper()
	return ca.issue(t, x509.ExtKeyUsageClientAuth, name)
}

func (ca *CA) issue(t testing.TB, usage x509.ExtKeyUsage, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	Must(t, err, "server key")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	Must(t, err, "server certificate")
	kb, err := x509.MarshalECPrivateKey(key)
	Must(t, err, "server key")
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// DistributionConfig configures StartDistribution.
type DistributionConfig struct {
	// CA, when set, makes the registry serve HTTPS only, with a
	// certificate the CA issues for TLSHosts and 127.0.0.1.
	CA       *CA
	TLSHosts []string
	// Users, when set, turns on htpasswd (Basic) auth with these
	// user → password pairs.
	Users map[string]string
	// ProxyRemoteURL, when set, makes the registry a pull-through cache
	// of that registry (distribution's proxy.remoteurl).
	ProxyRemoteURL string
}

// Distribution is a CNCF distribution registry process (the Debian
// docker-registry package) on a free 127.0.0.1 port.
type Distribution struct {
	// Port is the registry's port on 127.0.0.1.
	Port int
	// Pusher pushes fixtures through an in-test proxy on another loopback
	// port that adds the first user's credentials and speaks TLS to the
	// registry, so that testenv's Push helpers need no options. What it
	// pushes is stored by, and read back from, the real registry.
	Pusher *Registry
}

// StartDistribution writes a config.yml (filesystem storage in a temporary
// folder), starts the registry, waits until /v2/ answers and stops it at
// cleanup. A missing binary fails the test, with what to install.
func StartDistribution(t testing.TB, cfg DistributionConfig) *Distribution {
	t.Helper()
	bin := LookPath(t, "docker-registry", "docker-registry")
	dir := t.TempDir()
	d := &Distribution{Port: FreePort(t)}
	addr := "127.0.0.1:" + strconv.Itoa(d.Port)

	var conf strings.Builder
	fmt.Fprintf(&conf, "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n")
	fmt.Fprintf(&conf, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", filepath.Join(dir, "data"))
	fmt.Fprintf(&conf, "http:\n  addr: %s\n  secret: regcap-test-secret\n  relativeurls: true\n", addr)
	if cfg.CA != nil {
		certPEM, keyPEM := cfg.CA.Issue(t, append(append([]string(nil), cfg.TLSHosts...), "127.0.0.1")...)
		write(t, filepath.Join(dir, "cert.pem"), certPEM)
		write(t, filepath.Join(dir, "key.pem"), keyPEM)
		fmt.Fprintf(&conf, "  tls:\n    certificate: %s\n    key: %s\n", filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	}
	var firstUser, firstPass string
	if len(cfg.Users) > 0 {
		var htpasswd strings.Builder
		for u, p := range cfg.Users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			Must(t, err, "bcrypt")
			fmt.Fprintf(&htpasswd, "%s:%s\n", u, h)
			if firstUser == "" || u < firstUser {
				firstUser, firstPass = u, p
			}
		}
		write(t, filepath.Join(dir, "htpasswd"), []byte(htpasswd.String()))
		fmt.Fprintf(&conf, "auth:\n  htpasswd:\n    realm: regcap-test\n    path: %s\n", filepath.Join(dir, "htpasswd"))
	}
	if cfg.ProxyRemoteURL != "" {
		fmt.Fprintf(&conf, "proxy:\n  remoteurl: %s\n", cfg.ProxyRemoteURL)
	}
	write(t, filepath.Join(dir, "config.yml"), []byte(conf.String()))

	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	Must(t, cmd.Start(), "starting %s", bin)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	scheme := "http"
	rt := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.CA != nil {
		scheme = "https"
		pool := x509.NewCertPool()
		pool.AddCert(cfg.CA.Cert)
		rt.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	base := &url.URL{Scheme: scheme, Host: addr}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("docker-registry exited at start-up:\n%s", out.String())
		default:
		}
		resp, err := (&http.Client{Transport: rt, Timeout: time.Second}).Get(base.String() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s did not answer /v2/: %v\n%s", addr, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	proxy := &httputil.ReverseProxy{
		Transport: rt,
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(base)
			r.Out.Host = addr
			if firstUser != "" {
				r.Out.SetBasicAuth(firstUser, firstPass)
			}
		},
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	d.Pusher = &Registry{Host: strings.TrimPrefix(srv.URL, "http://"), Server: srv}
	return d
}

func write(t testing.TB, path string, b []byte) {
	t.Helper()
	Must(t, os.WriteFile(path, b, 0o600), "writing %s", path)
}
