package registry_test

import (
	"encoding/base64"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

func TestParseSources(t *testing.T) {
	ca := testenv.NewCA(t)
	derPath := filepath.Join(t.TempDir(), "ca.der")
	testenv.Must(t, os.WriteFile(derPath, ca.Cert.Raw, 0o600), "der")

	s, err := registry.ParseSources([]byte(sourceAuthority("registry.example.com:5000", ca) + `
  docker.io:
    - type: Path
      path: ` + derPath + `
insecure_sources:
  - "insecure.example.com:5000"
  - localhost:5001
`))
	testenv.Must(t, err, "parsing")
	if !s.Insecure("insecure.example.com:5000") || s.Insecure("insecure.example.com") {
		t.Error("insecure_sources must match host:port exactly")
	}
	if s.RootCAs("registry.example.com:5000") == nil || s.RootCAs("registry.example.com") != nil {
		t.Error("source_authorities must apply to their host:port only")
	}
	if s.RootCAs("index.docker.io") == nil {
		t.Error("docker.io authorities must apply to index.docker.io")
	}

	// JSON is accepted.
	j, err := registry.ParseSources([]byte(`{"insecure_sources":["a.example.com"],"source_authorities":{}}`))
	testenv.Must(t, err, "JSON")
	if !j.Insecure("a.example.com") {
		t.Error("JSON insecure_sources not read")
	}

	for _, bad := range []struct{ doc, want string }{
		{"insecure_source:\n  - a.example.com\n", "insecure_source"},
		{"source_authorities:\n  a.example.com:\n    - type: Data\n      pem: x\n", "pem"},
		{"source_authorities:\n  a.example.com:\n    - type: File\n      path: /x\n", `"File"`},
		{"source_authorities:\n  a.example.com:\n    - type: Data\n      data: not a certificate\n", "certificate"},
		{`{"insecureSources":["a"]}`, "insecureSources"},
	} {
		_, err := registry.ParseSources([]byte(bad.doc))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want one naming %s", bad.doc, err, bad.want)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	testenv.Must(t, os.MkdirAll(filepath.Dir(path), 0o700), "mkdir")
	testenv.Must(t, os.WriteFile(path, []byte(content), 0o600), "write")
}

func resolve(t *testing.T, kc authn.Keychain, image string) *authn.AuthConfig {
	t.Helper()
	ref, err := name.ParseReference(image)
	testenv.Must(t, err, "ref")
	a, err := kc.Resolve(ref.Context())
	testenv.Must(t, err, "resolve %s", image)
	if a == authn.Anonymous {
		return nil
	}
	cfg, err := a.Authorization()
	testenv.Must(t, err, "authorization")
	return cfg
}

func TestDockerConfigKeys(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, key := range []string{"https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io"} {
		t.Run("hub "+key, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "config.json")
			writeFile(t, p, `{"auths":{"`+key+`":{"auth":"`+b64("hubuser:hubpw")+`"}}}`)
			kc, err := registry.LoadDockerConfig(p)
			testenv.Must(t, err, "load")
			for _, img := range []string{"busybox", "docker.io/library/busybox:1", "index.docker.io/me/app"} {
				if c := resolve(t, kc, img); c == nil || c.Username != "hubuser" || c.Password != "hubpw" {
					t.Errorf("%s: got %+v", img, c)
				}
			}
			if c := resolve(t, kc, "ghcr.io/me/app"); c != nil {
				t.Error("Hub credentials sent to ghcr.io")
			}
		})
	}

	dir := t.TempDir()
	// A Kubernetes pull secret mounted as a folder: the key is the file name.
	writeFile(t, filepath.Join(dir, ".dockerconfigjson"), `{"auths":{
		"https://ghcr.io":{"username":"gh","password":"ghpw"},
		"registry.example.com:5000":{"identitytoken":"idtok"},
		"harbor.example.com":{"auth":"`+b64("robot$x:harborpw")+`"}}}`)
	kc, err := registry.LoadDockerConfig(dir)
	testenv.Must(t, err, "load folder")
	if c := resolve(t, kc, "ghcr.io/me/app"); c == nil || c.Username != "gh" || c.Password != "ghpw" {
		t.Errorf("ghcr.io (https:// key): %+v", c)
	}
	if c := resolve(t, kc, "registry.example.com:5000/app"); c == nil || c.IdentityToken != "idtok" {
		t.Errorf("identity token: %+v", c)
	}
	if c := resolve(t, kc, "registry.example.com/app"); c != nil {
		t.Error("credentials for :5000 sent to the default port")
	}
	if c := resolve(t, kc, "harbor.example.com/p/app"); c == nil || c.Username != "robot$x" || c.Password != "harborpw" {
		t.Errorf("auth field: %+v", c)
	}

	if _, err := registry.LoadDockerConfig(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("an explicit path that does not exist must be a start-up error")
	}
	bad := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, bad, `{"auths":{"a.example.com":{"auth":"!!!notbase64"}}}`)
	if _, err := registry.LoadDockerConfig(bad); err == nil || strings.Contains(err.Error(), "notbase64") {
		t.Errorf("bad auth: %v (must fail without quoting the secret)", err)
	}
}

// credHelpers and credsStore run docker-credential-<name> as Docker does.
func TestDockerConfigCredentialHelpers(t *testing.T) {
	bin := t.TempDir()
	helper := `#!/bin/sh
read server
case "$server" in
  helped.example.com) echo '{"ServerURL":"helped.example.com","Username":"from-helper","Secret":"helper-pw"}' ;;
  https://index.docker.io/v1/) echo '{"ServerURL":"x","Username":"store-user","Secret":"store-pw"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
`
	testenv.Must(t, os.WriteFile(filepath.Join(bin, "docker-credential-regcaptest"), []byte(helper), 0o700), "helper")
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	p := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, p, `{"credHelpers":{"helped.example.com":"regcaptest"},"credsStore":"regcaptest"}`)
	kc, err := registry.LoadDockerConfig(p)
	testenv.Must(t, err, "load")
	if c := resolve(t, kc, "helped.example.com/app"); c == nil || c.Username != "from-helper" || c.Password != "helper-pw" {
		t.Errorf("credHelpers: %+v", c)
	}
	if c := resolve(t, kc, "busybox"); c == nil || c.Username != "store-user" {
		t.Errorf("credsStore for Hub: %+v", c)
	}
	if c := resolve(t, kc, "nothing.example.com/app"); c != nil {
		t.Errorf("credsStore without an entry: %+v, want anonymous", c)
	}
}

func TestGuardRules(t *testing.T) {
	g, err := registry.NewGuard(registry.DefaultDenyCIDRs(), []string{"ghcr.io", "*.example.com", "registry.local:5000", "docker.io"})
	testenv.Must(t, err, "guard")
	for host, ok := range map[string]bool{
		"ghcr.io": true, "ghcr.io:443": true, "a.example.com": true, "a.b.example.com:8443": true,
		"example.com": false, "registry.local:5000": true, "registry.local": false, "registry.local:5001": false,
		"index.docker.io": true, "quay.io": false, "ghcr.io.evil.test": false,
	} {
		err := g.CheckRegistry(host)
		if (err == nil) != ok {
			t.Errorf("CheckRegistry(%s) = %v, want allowed=%v", host, err, ok)
		}
		if err != nil && !errors.Is(err, registry.ErrDenied) {
			t.Errorf("CheckRegistry(%s): %v does not wrap ErrDenied", host, err)
		}
	}
	for addr, denied := range map[string]bool{
		"169.254.169.254": true, "169.254.0.1": true, "fe80::1": true, "fd00:ec2::254": true,
		"::ffff:169.254.169.254": true, "127.0.0.1": false, "10.0.0.1": false, "fd00:ec2::253": false,
	} {
		err := g.CheckAddr(netip.MustParseAddr(addr))
		if (err != nil) != denied {
			t.Errorf("CheckAddr(%s) = %v, want denied=%v", addr, err, denied)
		}
	}
	// --deny-cidrs replaces the defaults.
	g2, err := registry.NewGuard([]string{"127.0.0.5/32", "10.1.2.3"}, nil)
	testenv.Must(t, err, "guard")
	if g2.CheckAddr(netip.MustParseAddr("169.254.169.254")) != nil || g2.CheckAddr(netip.MustParseAddr("10.1.2.3")) == nil {
		t.Error("--deny-cidrs must replace the default list")
	}
	if _, err := registry.NewGuard([]string{"not-a-cidr"}, nil); err == nil {
		t.Error("bad CIDR accepted")
	}
}
