package registry_test

import (
	"context"
	"crypto/tls"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/internal/mirrors"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// hosts.toml's ca is the trust of that mirror's HTTPS: with it the mirror
// serves; without it the TLS handshake fails and the registry answers.
func TestMirrorCAFromHostsToml(t *testing.T) {
	for _, withCA := range []bool{true, false} {
		up := testenv.StartRegistry(t)
		img := up.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
		m := testenv.StartRegistry(t)
		copyImage(t, m, "team/app", "v1", img)
		ca := testenv.NewCA(t)
		cert, key := ca.Issue(t, "127.0.0.1")
		pair, err := tls.X509KeyPair(cert, key)
		testenv.Must(t, err, "pair")
		srv := httptest.NewUnstartedServer(m.Server.Config.Handler)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		mhost := strings.TrimPrefix(srv.URL, "https://")

		toml := "[host.\"https://" + mhost + "\"]\n"
		if withCA {
			toml += "ca = \"mirror-ca.pem\"\n"
		}
		dir := hostsDir(t, up.Host, toml)
		folder := filepath.Join(dir, strings.Replace(up.Host, ":", "_", 1)+"_")
		testenv.Must(t, os.WriteFile(filepath.Join(folder, "mirror-ca.pem"), ca.CertPEM, 0o644), "ca")
		res := mirrors.New(mirrors.WithHostsDir(dir))
		tr := registry.NewTransports(registry.WithTLSHook(res.ApplyTLS))
		p := registry.New(registry.WithEndpoints(res), registry.WithBaseTransport(tr.For))
		ref, _ := name.ParseReference(up.Ref("team/app", "v1"))
		got, err := p.Manifest(context.Background(), ref)
		if err != nil || got.Digest.String() != img.Digest {
			t.Fatalf("ca %v: %v", withCA, err)
		}
		mirrorServed, upServed := manifestRequests(m) > 0, manifestRequests(up) > 0
		if withCA && (!mirrorServed || upServed) {
			t.Fatalf("with the ca: mirror %v, registry %v; want the mirror only", mirrorServed, upServed)
		}
		if !withCA && (mirrorServed || !upServed) {
			t.Fatalf("without the ca: mirror %v, registry %v; want the registry only", mirrorServed, upServed)
		}
	}
}
