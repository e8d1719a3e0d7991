package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// httpAPI is a worker serving the HTTP APIs over TLS 1.3 with client
// certificates, and an HTTPS client with one.
type httpAPI struct {
	url    string
	client *http.Client
	ca     *testenv.CA
	dir    string
	w      *testworker.Worker
	reg    *testenv.Registry
	nats   string
}

func startHTTPAPI(t testing.TB, cfg worker.Config) *httpAPI {
	t.Helper()
	a := &httpAPI{ca: testenv.NewCA(t), dir: t.TempDir(), reg: testenv.StartRegistry(t)}
	cert, key := a.ca.Issue(t, "127.0.0.1")
	clientCA := testenv.NewCA(t)
	httpWriteFile(t, filepath.Join(a.dir, "tls.crt"), cert)
	httpWriteFile(t, filepath.Join(a.dir, "tls.key"), key)
	httpWriteFile(t, filepath.Join(a.dir, "client-ca.crt"), clientCA.CertPEM)
	ns := testenv.StartNATS(t)
	a.nats = ns.ClientURL()
	cfg.HTTPAddr, cfg.TLSCert, cfg.TLSKey, cfg.ClientCA = "127.0.0.1:0", filepath.Join(a.dir, "tls.crt"), filepath.Join(a.dir, "tls.key"), filepath.Join(a.dir, "client-ca.crt")
	a.w = testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), Config: cfg})
	a.url = "https://" + a.w.APIAddr()
	a.client = httpsClient(t, a.ca, clientCA)
	return a
}

// httpsClient trusts serverCA and presents a certificate of clientCA
// (none when clientCA is nil).
func httpsClient(t testing.TB, serverCA, clientCA *testenv.CA) *http.Client {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.Cert)
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
	if clientCA != nil {
		cert, key := clientCA.IssueClient(t, "gatekeeper")
		pair, err := tls.X509KeyPair(cert, key)
		testenv.Must(t, err, "client pair")
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
}

func httpWriteFile(t testing.TB, path string, b []byte) {
	t.Helper()
	testenv.Must(t, os.WriteFile(path, b, 0o600), "writing %s", path)
}

func httpGet(t testing.TB, c *http.Client, url string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	testenv.Must(t, err, "GET %s", url)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

type gkResponse struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		Idempotent bool `json:"idempotent"`
		Items      []struct {
			Key   string          `json:"key"`
			Value json.RawMessage `json:"value"`
			Error string          `json:"error"`
		} `json:"items"`
		SystemError string `json:"systemError"`
	} `json:"response"`
}

// gkPost posts a ProviderRequest body to /gatekeeper/v1/<fn>.
func gkPost(t *testing.T, a *httpAPI, fn string, body string) gkResponse {
	t.Helper()
	resp, err := a.client.Post(a.url+"/gatekeeper/v1/"+fn, "application/json", strings.NewReader(body))
	testenv.Must(t, err, "POST gatekeeper")
	defer resp.Body.Close()
	var pr gkResponse
	if resp.StatusCode != 200 {
		t.Fatalf("gatekeeper %s: HTTP %d, want 200", fn, resp.StatusCode)
	}
	testenv.Must(t, json.NewDecoder(resp.Body).Decode(&pr), "decoding the ProviderResponse")
	if pr.APIVersion != "externaldata.gatekeeper.sh/v1beta1" || pr.Kind != "ProviderResponse" || !pr.Response.Idempotent {
		t.Fatalf("not an idempotent ProviderResponse: %+v", pr)
	}
	return pr
}

// gkKeys is a ProviderRequest body asking for ks.
func gkKeys(ks ...string) string {
	b, _ := json.Marshal(map[string]any{"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest", "request": map[string]any{"keys": ks}})
	return string(b)
}

func httpCompact(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	testenv.Must(t, json.Compact(&buf, b), "compact")
	return buf.Bytes()
}

// httpPEM encodes a tls.Certificate's leaf and ECDSA key as PEM.
func httpPEM(t *testing.T, c tls.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	key, ok := c.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("client key is %T", c.PrivateKey)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	testenv.Must(t, err, "key")
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
