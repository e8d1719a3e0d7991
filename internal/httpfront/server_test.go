package httpfront_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// api is a worker serving the HTTP APIs over TLS 1.3 with client
// certificates, and an HTTPS client with one.
type api struct {
	url    string
	client *http.Client
	ca     *testenv.CA
	dir    string
	w      *testworker.Worker
	reg    *testenv.Registry
	nats   string
}

func startAPI(t testing.TB, cfg worker.Config) *api {
	t.Helper()
	a := &api{ca: testenv.NewCA(t), dir: t.TempDir(), reg: testenv.StartRegistry(t)}
	cert, key := a.ca.Issue(t, "127.0.0.1")
	clientCA := testenv.NewCA(t)
	write(t, filepath.Join(a.dir, "tls.crt"), cert)
	write(t, filepath.Join(a.dir, "tls.key"), key)
	write(t, filepath.Join(a.dir, "client-ca.crt"), clientCA.CertPEM)
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

func write(t testing.TB, path string, b []byte) {
	t.Helper()
	testenv.Must(t, os.WriteFile(path, b, 0o600), "writing %s", path)
}

func get(t testing.TB, c *http.Client, url string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	testenv.Must(t, err, "GET %s", url)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestPlainAPI: GET /v1/<function>?image= and POST with the waPC payload
// answer the NATS reply's bytes with Regcap-Cache; errors are the
// contract code with {"code","message"}.
func TestPlainAPI(t *testing.T) {
	a := startAPI(t, worker.Config{})
	idx := a.reg.PushMultiPlatform(t, "app", "v1", testenv.OCIIndex)
	ref := a.reg.Ref("app", "v1")

	code, h, body := get(t, a.client, a.url+"/v1/manifest_digest?image="+ref)
	if code != 200 || string(body) != `{"digest":"`+idx.Digest+`"}` || h.Get(contract.HeaderCache) != "miss" || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET digest: %d %s %v", code, body, h)
	}
	resp, err := a.client.Post(a.url+"/v1/oci_manifest", "application/json", strings.NewReader(`"`+ref+`"`))
	testenv.Must(t, err, "POST")
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, idx.Body) {
		t.Fatalf("POST manifest: %d, body differs", resp.StatusCode)
	}
	resp, err = a.client.Post(a.url+"/v1/oci_manifest", "application/json", strings.NewReader(`"`+strings.Repeat("a", 1<<20)+`"`))
	testenv.Must(t, err, "POST 1 MiB")
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "over the 4096-byte limit") {
		t.Fatalf("POST of a 1 MiB payload: %d %s, want 400", resp.StatusCode, body)
	}
	code, _, body = get(t, a.client, a.url+"/v1/oci_manifest_config?image="+ref+"&platform=linux/arm64")
	if code != 200 || !bytes.Equal(body, testenv.ConfigReply(idx.Images[1])) {
		t.Fatalf("GET config arm64: %d", code)
	}
	for _, c := range []struct {
		path string
		code int
	}{
		{"/v1/manifest_digest?image=" + a.reg.Ref("app", "nope"), 404},
		{"/v1/manifest_digest?image=Not%20Valid", 400},
		{"/v1/manifest_digest", 400},
		{"/v1/pull?image=" + ref, 404},
	} {
		code, _, body := get(t, a.client, a.url+c.path)
		var e struct {
			Code    int
			Message string
		}
		if code != c.code || json.Unmarshal(body, &e) != nil || e.Code != c.code || e.Message == "" {
			t.Errorf("%s: %d %s, want %d with {code, message}", c.path, code, body, c.code)
		}
	}
}

type providerResponse struct {
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

func provider(t *testing.T, a *api, fn string, body string) providerResponse {
	t.Helper()
	resp, err := a.client.Post(a.url+"/gatekeeper/v1/"+fn, "application/json", strings.NewReader(body))
	testenv.Must(t, err, "POST gatekeeper")
	defer resp.Body.Close()
	var pr providerResponse
	if resp.StatusCode != 200 {
		t.Fatalf("gatekeeper %s: HTTP %d, want 200", fn, resp.StatusCode)
	}
	testenv.Must(t, json.NewDecoder(resp.Body).Decode(&pr), "decoding the ProviderResponse")
	if pr.APIVersion != "externaldata.gatekeeper.sh/v1beta1" || pr.Kind != "ProviderResponse" || !pr.Response.Idempotent {
		t.Fatalf("not an idempotent ProviderResponse: %+v", pr)
	}
	return pr
}

func keys(ks ...string) string {
	b, _ := json.Marshal(map[string]any{"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest", "request": map[string]any{"keys": ks}})
	return string(b)
}

// TestGatekeeperBatch: a mixed batch of good, unknown, malformed and
// duplicate keys gets one item per distinct key, in order, each with its
// value or its error; pin rewrites tags to digests.
func TestGatekeeperBatch(t *testing.T) {
	a := startAPI(t, worker.Config{})
	img := a.reg.PushImage(t, "app", "v1", testenv.OCIManifest, "linux/amd64")
	good, unknown := a.reg.Ref("app", "v1"), a.reg.Ref("app", "nope")
	pr := provider(t, a, "manifest_digest", keys(good, unknown, "Not Valid", good))
	items := pr.Response.Items
	if pr.Response.SystemError != "" || len(items) != 3 {
		t.Fatalf("want 3 items, no system error: %+v", pr.Response)
	}
	if items[0].Key != good || string(items[0].Value) != `"`+img.Digest+`"` || items[0].Error != "" {
		t.Errorf("good key: %+v", items[0])
	}
	if items[1].Key != unknown || !strings.HasPrefix(items[1].Error, "404: ") {
		t.Errorf("unknown key: %+v", items[1])
	}
	if items[2].Key != "Not Valid" || !strings.HasPrefix(items[2].Error, "400: ") {
		t.Errorf("malformed key: %+v", items[2])
	}

	pinned := a.reg.Ref("app", img.Digest)
	pr = provider(t, a, "pin", keys(good, pinned))
	if v := string(pr.Response.Items[0].Value); v != `"`+a.reg.Host+`/app@`+img.Digest+`"` {
		t.Errorf("pin %s: %s", good, v)
	}
	if v := string(pr.Response.Items[1].Value); v != `"`+pinned+`"` {
		t.Errorf("pin of a pinned key: %s, want it unchanged", v)
	}

	pr = provider(t, a, "oci_manifest", keys(good))
	if !bytes.Equal(pr.Response.Items[0].Value, img.Manifest) && string(compact(t, pr.Response.Items[0].Value)) != string(compact(t, img.Manifest)) {
		t.Errorf("oci_manifest value: %s", pr.Response.Items[0].Value)
	}

	for _, c := range []struct{ name, body, want string }{
		{"not JSON", "{", "not a JSON ProviderRequest"},
		{"wrong kind", `{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"Other","request":{"keys":[]}}`, "want kind ProviderRequest"},
		{"too many keys", keys(make([]string, 1025)...), "over the 1024-key limit"},
		{"body over 1 MiB", keys(strings.Repeat("a", 1<<20)), "request body over"},
	} {
		pr := provider(t, a, "manifest_digest", c.body)
		if !strings.Contains(pr.Response.SystemError, c.want) || len(pr.Response.Items) != 0 {
			t.Errorf("%s: %+v, want systemError %q", c.name, pr.Response, c.want)
		}
	}
}

func compact(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	testenv.Must(t, json.Compact(&buf, b), "compact")
	return buf.Bytes()
}

// TestGatekeeperTimeout: in a batch mixing cache hits with a registry
// that hangs past --http-timeout, the hits are answered and the hung key
// gets an item error, within the timeout; its fetch goes on and fills
// the cache.
func TestGatekeeperTimeout(t *testing.T) {
	a := startAPI(t, worker.Config{HTTPTimeout: 500 * time.Millisecond})
	img := a.reg.PushImage(t, "fast/app", "v1", testenv.OCIManifest, "linux/amd64")
	slow := a.reg.PushImage(t, "slow/app", "v1", testenv.OCIManifest, "linux/amd64")
	provider(t, a, "manifest_digest", keys(a.reg.Ref("fast/app", "v1"))) // now a hit
	gate := a.reg.Hold("/slow/app/manifests/")
	start := time.Now()
	pr := provider(t, a, "manifest_digest", keys(a.reg.Ref("fast/app", "v1"), a.reg.Ref("slow/app", "v1")))
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("answered after %s, far past the 500ms timeout", elapsed)
	}
	it := pr.Response.Items
	if string(it[0].Value) != `"`+img.Digest+`"` || !strings.HasPrefix(it[1].Error, "504: ") {
		t.Fatalf("items %+v, want the hit and a 504 for the hung key", it)
	}
	gate.Release()
	testenv.Eventually(t, "the hung key's fetch to fill the cache", func() bool {
		code, h, body := get(t, a.client, a.url+"/v1/manifest_digest?image="+a.reg.Ref("slow/app", "v1"))
		return code == 200 && h.Get(contract.HeaderCache) == "hit" && string(body) == `{"digest":"`+slow.Digest+`"}`
	})
}

// TestMutualTLS: without a client certificate, or with one of another
// CA, the handshake is refused; TLS below 1.3 too.
func TestMutualTLS(t *testing.T) {
	a := startAPI(t, worker.Config{})
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

// TestCertificateRotation: a new certificate written over the files is
// served without a restart.
func TestCertificateRotation(t *testing.T) {
	a := startAPI(t, worker.Config{})
	next := testenv.NewCA(t)
	cert, key := next.Issue(t, "127.0.0.1")
	time.Sleep(10 * time.Millisecond) // a later modification time
	write(t, filepath.Join(a.dir, "tls.key"), key)
	write(t, filepath.Join(a.dir, "tls.crt"), cert)
	clientCA := a.client.Transport.(*http.Transport).TLSClientConfig.Certificates
	c := httpsClient(t, next, nil)
	c.Transport.(*http.Transport).TLSClientConfig.Certificates = clientCA
	testenv.Eventually(t, "the rotated certificate to be served", func() bool {
		_, err := c.Get(a.url + "/v1/manifest_digest?image=x")
		return err == nil
	})
}

// TestOneFetchOverNATSAndHTTP: one image asked for at the same time over
// NATS and over HTTP costs one upstream fetch.
func TestOneFetchOverNATSAndHTTP(t *testing.T) {
	a := startAPI(t, worker.Config{})
	img := a.reg.PushImage(t, "both/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := a.reg.Ref("both/app", "v1")
	gate := a.reg.Hold("/both/app/manifests/")
	cli := testenv.Client(t, a.nats)
	errs := make(chan error, 2)
	go func() {
		_, err := cli.Image(context.Background(), contract.ManifestDigest, ref)
		errs <- err
	}()
	go func() {
		code, _, body := get(t, a.client, a.url+"/v1/manifest_digest?image="+ref)
		if code != 200 || string(body) != `{"digest":"`+img.Digest+`"}` {
			errs <- fmt.Errorf("HTTP %d %s", code, body)
			return
		}
		errs <- nil
	}()
	testenv.Eventually(t, "both requests pending", func() bool { return a.w.Pending() == 2 })
	gate.Release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := a.reg.CountManifest("HEAD", "both/app", "v1"); n != 1 {
		t.Errorf("%d HEADs for one image asked over NATS and HTTP at once, want 1", n)
	}
}

// TestCurl asks the plain API with curl, as an operator would: TLS 1.3
// and a client certificate, the reply body as the NATS contract's.
func TestCurl(t *testing.T) {
	curl := testenv.LookPath(t, "curl", "curl")
	a := startAPI(t, worker.Config{})
	img := a.reg.PushImage(t, "curl/app", "v1", testenv.OCIManifest, "linux/amd64")
	pair := a.client.Transport.(*http.Transport).TLSClientConfig.Certificates[0]
	write(t, filepath.Join(a.dir, "ca.crt"), a.ca.CertPEM)
	certPEM, keyPEM := pemOf(t, pair)
	write(t, filepath.Join(a.dir, "client.crt"), certPEM)
	write(t, filepath.Join(a.dir, "client.key"), keyPEM)
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

// pemOf encodes a tls.Certificate's leaf and ECDSA key as PEM.
func pemOf(t *testing.T, c tls.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	key, ok := c.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("client key is %T", c.PrivateKey)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	testenv.Must(t, err, "key")
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
