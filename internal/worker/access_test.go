package worker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"go.uber.org/zap/zaptest"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// accessEnv lists the environment variables newAccess's flags read.
var accessEnv = []string{"REGCAP_DOCKER_CONFIG", "REGCAP_SOURCES", "REGCAP_DENY_CIDRS", "REGCAP_ALLOW_REGISTRIES", "DOCKER_CONFIG"}

// cleanAccessEnv unsets accessEnv for the test (restored at cleanup), so
// that the environment the tests run in does not change what they see.
func cleanAccessEnv(t *testing.T) {
	t.Helper()
	for _, v := range accessEnv {
		t.Setenv(v, "")
		testenv.Must(t, os.Unsetenv(v), "unsetting %s", v)
	}
}

// accessFrom parses args as the worker does (flags, then REGCAP_*
// environment) and builds the registry access from them.
func accessFrom(t *testing.T, args ...string) (*worker.Access, error) {
	t.Helper()
	return worker.AccessFrom(args, zaptest.NewLogger(t))
}

func authConfig(host, user, pass string) string {
	return `{"auths":{"` + host + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + `"}}}`
}

func write(t *testing.T, path, content string) string {
	t.Helper()
	testenv.Must(t, os.MkdirAll(filepath.Dir(path), 0o700), "mkdir")
	testenv.Must(t, os.WriteFile(path, []byte(content), 0o600), "writing %s", path)
	return path
}

// basicAuthRegistry is an in-process registry that wants Basic
// credentials user:pass for everything.
func basicAuthRegistry(t *testing.T, user, pass string) (*testenv.Registry, string) {
	t.Helper()
	reg := testenv.StartRegistry(t)
	reg.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	reg.Override(func(r *http.Request) bool {
		u, p, ok := r.BasicAuth()
		return !ok || u != user || p != pass
	}, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="regcap-test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	return reg, reg.Ref("team/app", "v1")
}

func fetchManifest(t *testing.T, c *registry.Puller, image string) *contract.Error {
	t.Helper()
	ref, err := name.ParseReference(image)
	testenv.Must(t, err, "ref %s", image)
	_, err = handlers.NewFetcher(c).Fetch(context.Background(), handlers.Request{Function: contract.OCIManifest, Ref: ref})
	var ce *contract.Error
	if err == nil || !errors.As(err, &ce) {
		testenv.Must(t, err, "fetching %s", image)
		return nil
	}
	return ce
}

// The docker config is found from --docker-config (a folder or a file,
// config.json or .dockerconfigjson) or REGCAP_DOCKER_CONFIG, and its
// credentials are what the production client sends.
func TestAccessDockerConfig(t *testing.T) {
	const user, pass = "robot", "robot-pw-5531"
	reg, image := basicAuthRegistry(t, user, pass)
	folder := t.TempDir()
	inFolder := write(t, filepath.Join(folder, "config.json"), authConfig(reg.Host, user, pass))
	secret := write(t, filepath.Join(t.TempDir(), "pull-secret", ".dockerconfigjson"), authConfig(reg.Host, user, pass))

	for _, c := range []struct {
		name     string
		args     []string
		env      string // REGCAP_DOCKER_CONFIG
		wantPath string
	}{
		{"flag, folder", []string{"--docker-config", folder}, "", inFolder},
		{"flag, file", []string{"--docker-config", secret}, "", secret},
		{"flag, folder of a pull secret", []string{"--docker-config", filepath.Dir(secret)}, "", secret},
		{"environment, folder", nil, folder, inFolder},
		{"environment, file", nil, secret, secret},
		{"flag over environment", []string{"--docker-config", secret}, folder, secret},
	} {
		t.Run(c.name, func(t *testing.T) {
			cleanAccessEnv(t)
			if c.env != "" {
				t.Setenv("REGCAP_DOCKER_CONFIG", c.env)
			}
			a, err := accessFrom(t, c.args...)
			testenv.Must(t, err, "newAccess")
			if got := a.Keychain.Path(); got != c.wantPath {
				t.Errorf("docker config %q, want %q", got, c.wantPath)
			}
			if e := fetchManifest(t, a.Puller, image); e != nil {
				t.Errorf("with the configured credentials: %d %s", e.Code, e.Message)
			}
		})
	}

	t.Run("without credentials", func(t *testing.T) {
		cleanAccessEnv(t)
		t.Setenv("HOME", t.TempDir())
		a, err := accessFrom(t)
		testenv.Must(t, err, "newAccess")
		if e := fetchManifest(t, a.Puller, image); e == nil || e.Code != 401 || !strings.Contains(e.Message, "none were found") {
			t.Errorf("anonymous: %v, want 401 saying none were found", e)
		}
	})
}

// Without --docker-config, the config is looked up where Docker looks:
// $DOCKER_CONFIG/config.json.
func TestAccessDefaultDockerConfigLookup(t *testing.T) {
	const user, pass = "robot", "robot-pw-8812"
	reg, image := basicAuthRegistry(t, user, pass)
	cleanAccessEnv(t)
	dir := t.TempDir()
	p := write(t, filepath.Join(dir, "config.json"), authConfig(reg.Host, user, pass))
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("HOME", t.TempDir()) // never the real ~/.docker

	kc, err := registry.LoadDockerConfig("")
	testenv.Must(t, err, "LoadDockerConfig")
	if kc.Path() != p {
		t.Errorf("LoadDockerConfig(\"\") read %q, want %q", kc.Path(), p)
	}
	a, err := accessFrom(t)
	testenv.Must(t, err, "newAccess")
	if a.Keychain.Path() != p {
		t.Errorf("newAccess read %q, want %q", a.Keychain.Path(), p)
	}
	if e := fetchManifest(t, a.Puller, image); e != nil {
		t.Errorf("with credentials from $DOCKER_CONFIG: %d %s", e.Code, e.Message)
	}
}

// --sources is read into the production options: insecure_sources and
// source_authorities.
func TestAccessSources(t *testing.T) {
	ca := testenv.NewCA(t)
	var doc bytes.Buffer
	doc.WriteString("insecure_sources:\n  - plain.regcap.test:5000\nsource_authorities:\n  \"secure.regcap.test:5443\":\n    - type: Data\n      data: |\n")
	for _, l := range strings.Split(strings.TrimSpace(string(ca.CertPEM)), "\n") {
		doc.WriteString("        " + l + "\n")
	}
	p := write(t, filepath.Join(t.TempDir(), "sources.yaml"), doc.String())
	for _, c := range []struct {
		name string
		args []string
		env  string
	}{
		{"flag", []string{"--sources", p}, ""},
		{"environment", nil, p},
	} {
		t.Run(c.name, func(t *testing.T) {
			cleanAccessEnv(t)
			if c.env != "" {
				t.Setenv("REGCAP_SOURCES", c.env)
			}
			a, err := accessFrom(t, c.args...)
			testenv.Must(t, err, "newAccess")
			if !a.Sources.Insecure("plain.regcap.test:5000") || a.Sources.Insecure("secure.regcap.test:5443") {
				t.Error("insecure_sources not read")
			}
			if a.Sources.RootCAs("secure.regcap.test:5443") == nil || a.Sources.RootCAs("plain.regcap.test:5000") != nil {
				t.Error("source_authorities not read")
			}
		})
	}
}

// --deny-cidrs replaces the default deny list and is enforced at dial time
// by the production transports; --allow-registries restricts the
// registries asked at all.
func TestAccessGuard(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		cleanAccessEnv(t)
		a, err := accessFrom(t)
		testenv.Must(t, err, "newAccess")
		for addr, denied := range map[string]bool{"169.254.169.254": true, "fe80::1": true, "fd00:ec2::254": true, "127.0.0.1": false} {
			if err := a.Guard.CheckAddr(netip.MustParseAddr(addr)); (err != nil) != denied {
				t.Errorf("default guard: CheckAddr(%s) = %v, want denied=%v", addr, err, denied)
			}
		}
		if err := a.Guard.CheckRegistry("quay.io"); err != nil {
			t.Errorf("no --allow-registries: %v", err)
		}
	})

	for _, c := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"flags", []string{"--deny-cidrs", "127.0.0.5/32, ::ffff:127.0.0.6", "--allow-registries", "127.0.0.5:*,127.0.0.6:*,*.example.com"}, nil},
		{"environment", nil, map[string]string{"REGCAP_DENY_CIDRS": "127.0.0.5/32,::ffff:127.0.0.6", "REGCAP_ALLOW_REGISTRIES": "127.0.0.5:*,127.0.0.6:*,*.example.com"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cleanAccessEnv(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			a, err := accessFrom(t, c.args...)
			testenv.Must(t, err, "newAccess")
			if a.Guard.CheckAddr(netip.MustParseAddr("169.254.169.254")) != nil {
				t.Error("--deny-cidrs must replace the default list")
			}
			cl := testenv.ListenCounting(t, "127.0.0.5:0")
			port := cl.Port()
			cl6 := testenv.ListenCounting(t, "127.0.0.6:"+port)
			prod := a.Puller
			for _, host := range []string{"127.0.0.5", "127.0.0.6"} {
				e := fetchManifest(t, prod, host+":"+port+"/x/y:z")
				if e == nil || e.Code != 403 || !strings.Contains(e.Message, "--deny-cidrs") {
					t.Errorf("denied address %s: %v, want 403 from the dial guard", host, e)
				}
			}
			e := fetchManifest(t, prod, "127.0.0.1:"+port+"/x/y:z")
			if e == nil || e.Code != 403 || !strings.Contains(e.Message, "--allow-registries") {
				t.Errorf("registry outside the allow-list: %v, want 403", e)
			}
			if n := cl.CountBefore(t) + cl6.CountBefore(t); n != 0 {
				t.Errorf("denied addresses accepted %d connections", n)
			}
		})
	}
}

// A bad value in any of the files or lists is a start-up error naming the
// flag and the value, never a silent default.
func TestAccessStartupErrors(t *testing.T) {
	dir := t.TempDir()
	badSources := write(t, filepath.Join(dir, "sources.yaml"), "insecure_source:\n  - a.example.com\n")
	badConfig := write(t, filepath.Join(dir, "bad", "config.json"), `{"auths":`)
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"bad CIDR", []string{"--deny-cidrs", "127.0.0.0/8,not-a-cidr"}, []string{"--deny-cidrs", "not-a-cidr"}},
		{"bad allow pattern", []string{"--allow-registries", "ghcr.io,[bad"}, []string{"--allow-registries", "[bad"}},
		{"unknown sources key", []string{"--sources", badSources}, []string{"--sources", "insecure_source"}},
		{"missing sources", []string{"--sources", filepath.Join(dir, "nope.yaml")}, []string{"--sources", "nope.yaml"}},
		{"missing docker config", []string{"--docker-config", filepath.Join(dir, "nope")}, []string{"--docker-config", "nope"}},
		{"unreadable docker config", []string{"--docker-config", badConfig}, []string{"--docker-config", badConfig}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cleanAccessEnv(t)
			_, err := accessFrom(t, c.args...)
			if err == nil {
				t.Fatalf("%v: no error", c.args)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v: error %q does not name %q", c.args, err, w)
				}
			}
		})
	}
	t.Run("folder without a config", func(t *testing.T) {
		cleanAccessEnv(t)
		empty := t.TempDir()
		_, err := accessFrom(t, "--docker-config", empty)
		if err == nil || !strings.Contains(err.Error(), "--docker-config") || !strings.Contains(err.Error(), empty) {
			t.Errorf("empty folder: %v, want an error naming it", err)
		}
	})
}
