// Package gatekeeper_test drives regcap's Gatekeeper front with
// Gatekeeper's own external data client and types (module
// github.com/open-policy-agent/frameworks/constraint, package
// pkg/externaldata): the request as Gatekeeper builds and sends it, over
// its TLS client with a client certificate, and the reply decoded with
// its types. A module of its own, so that the worker's go.mod stays lean;
// `make test` runs it.
package gatekeeper_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/open-policy-agent/frameworks/constraint/pkg/apis/externaldata/unversioned"
	"github.com/open-policy-agent/frameworks/constraint/pkg/externaldata"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

func TestGatekeeperClient(t *testing.T) {
	ca, clientCA := testenv.NewCA(t), testenv.NewCA(t)
	dir := t.TempDir()
	cert, key := ca.Issue(t, "127.0.0.1")
	for name, b := range map[string][]byte{"tls.crt": cert, "tls.key": key, "client-ca.crt": clientCA.CertPEM} {
		testenv.Must(t, os.WriteFile(filepath.Join(dir, name), b, 0o600), "writing %s", name)
	}
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "gk/app", "v1", testenv.OCIManifest, "linux/amd64")
	ns := testenv.StartNATS(t)
	w := testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), Config: worker.Config{
		HTTPAddr: "127.0.0.1:0", TLSCert: filepath.Join(dir, "tls.crt"), TLSKey: filepath.Join(dir, "tls.key"),
		ClientCA: filepath.Join(dir, "client-ca.crt"),
	}})

	provider := &unversioned.Provider{Spec: unversioned.ProviderSpec{
		URL:      "https://" + w.APIAddr() + "/gatekeeper/v1/manifest_digest",
		Timeout:  3,
		CABundle: base64.StdEncoding.EncodeToString(ca.CertPEM),
	}}
	ccert, ckey := clientCA.IssueClient(t, "gatekeeper")
	pair, err := tls.X509KeyPair(ccert, ckey)
	testenv.Must(t, err, "client pair")
	good, unknown := reg.Ref("gk/app", "v1"), reg.Ref("gk/app", "nope")

	resp, status, err := externaldata.DefaultSendRequestToProvider(context.Background(), provider, []string{good, unknown, good}, &pair)
	if err != nil || status != 200 {
		t.Fatalf("Gatekeeper's client: status %d, %v", status, err)
	}
	if resp.Kind != "ProviderResponse" || !resp.Response.Idempotent || resp.Response.SystemError != "" || len(resp.Response.Items) != 2 {
		t.Fatalf("response %+v", resp)
	}
	if it := resp.Response.Items[0]; it.Key != good || it.Value != img.Digest || it.Error != "" {
		t.Errorf("good key: %+v", it)
	}
	if it := resp.Response.Items[1]; it.Key != unknown || it.Error == "" || it.Value != nil {
		t.Errorf("unknown key: %+v", it)
	}

}
