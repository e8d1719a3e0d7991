package e2e

import (
	"crypto/tls"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestHTTPMutualTLS: without a client certificate, or with one of another
// CA, the handshake is refused; TLS below 1.3 too.
func TestHTTPMutualTLS(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{})
	for name, c := range map[string]*http.Client{
		"no client certificate":     httpsClient(t, a.ca, nil),
		"certificate of another CA": httpsClient(t, a.ca, testenv.NewCA(t)),
	} {
		if _, err := c.Get(a.url + "/v1/manifest_digest?image=x"); err == nil {
			t.Errorf("%s: answered, want the handshake refused", name)
		}
	}
	old := httpsClient(t, a.ca, nil)
	old.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS12
	old.Transport.(*http.Transport).TLSClientConfig.MinVersion = tls.VersionTLS12
	if _, err := old.Get(a.url + "/v1/manifest_digest?image=x"); err == nil {
		t.Error("TLS 1.2: answered, want at least 1.3")
	}
}

// TestHTTPCertificateRotation: a new certificate written over the files
// is served without a restart.
func TestHTTPCertificateRotation(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{})
	next := testenv.NewCA(t)
	cert, key := next.Issue(t, "127.0.0.1")
	time.Sleep(10 * time.Millisecond) // a later modification time
	httpWriteFile(t, filepath.Join(a.dir, "tls.key"), key)
	httpWriteFile(t, filepath.Join(a.dir, "tls.crt"), cert)
	clientCA := a.client.Transport.(*http.Transport).TLSClientConfig.Certificates
	c := httpsClient(t, next, nil)
	c.Transport.(*http.Transport).TLSClientConfig.Certificates = clientCA
	testenv.Eventually(t, "the rotated certificate to be served", func() bool {
		_, err := c.Get(a.url + "/v1/manifest_digest?image=x")
		return err == nil
	})
}

// TestHTTPCurl asks the plain API with curl, as an operator would: TLS
// 1.3 and a client certificate, the reply body as the NATS contract's.
func TestHTTPCurl(t *testing.T) {
	curl := testenv.LookPath(t, "curl", "curl")
	a := startHTTPAPI(t, worker.Config{})
	img := a.reg.PushImage(t, "curl/app", "v1", testenv.OCIManifest, "linux/amd64")
	pair := a.client.Transport.(*http.Transport).TLSClientConfig.Certificates[0]
	httpWriteFile(t, filepath.Join(a.dir, "ca.crt"), a.ca.CertPEM)
	certPEM, keyPEM := httpPEM(t, pair)
	httpWriteFile(t, filepath.Join(a.dir, "client.crt"), certPEM)
	httpWriteFile(t, filepath.Join(a.dir, "client.key"), keyPEM)
	out, err := exec.Command(curl, "--silent", "--show-error", "--fail-with-body", "--tlsv1.3",
		"--cacert", filepath.Join(a.dir, "ca.crt"), "--cert", filepath.Join(a.dir, "client.crt"), "--key", filepath.Join(a.dir, "client.key"),
		a.url+"/v1/manifest_digest?image="+a.reg.Ref("curl/app", "v1")).CombinedOutput()
	if err != nil || string(out) != `{"digest":"`+img.Digest+`"}` {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	out, err = exec.Command(curl, "--silent", "--cacert", filepath.Join(a.dir, "ca.crt"), a.url+"/v1/manifest_digest?image=x").CombinedOutput()
	if err == nil {
		t.Fatalf("curl without a client certificate was answered: %s", out)
	}
}
