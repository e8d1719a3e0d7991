package registry_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/testworker"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// The end-to-end tests run the CNCF distribution registry and reach it
// under names in the reserved .test TLD ("secure.regcap.test"), which no
// real resolver answers. The worker's transports resolve them through a
// test lookup (registry.WithLookup) to loopback addresses, so that:
//   - the registry is "non-loopback-looking": the worker treats the name
//     like any remote host (HTTPS only unless insecure_sources says
//     otherwise), which 127.0.0.x names would not be, as Docker and ggcr
//     allow plain HTTP to loopback;
//   - certificates are checked against the name, as in production;
//   - every connection still goes to 127.0.0.0/8, and the SSRF guard sees
//     the resolved address at dial time, exactly as with DNS.
func testLookup(_ context.Context, host string) ([]string, error) {
	switch host {
	case "secure.regcap.test", "plain.regcap.test":
		return []string{"127.0.0.1"}, nil
	case "denied.regcap.test":
		return []string{"127.0.0.5"}, nil
	}
	return nil, fmt.Errorf("test resolver: no such host %s", host)
}

// setup is what a worker is given: file contents, written to a temp dir.
type setup struct {
	sources      string // sources.yaml content; "" for none
	dockerConfig string // config.json content; "" for none
	deny         []string
	allow        []string
	log          *zap.Logger // the worker's logger; nil: warnings to t.Log
}

type privateWorker struct {
	cli          *client.Client
	dockerConfig string // path of the docker config file
}

func startPrivateWorker(t *testing.T, s setup) *privateWorker {
	t.Helper()
	dir := t.TempDir()
	pw := &privateWorker{dockerConfig: filepath.Join(dir, "config.json")}
	srcPath := ""
	if s.sources != "" {
		srcPath = filepath.Join(dir, "sources.yaml")
		testenv.Must(t, os.WriteFile(srcPath, []byte(s.sources), 0o600), "sources")
	}
	if s.dockerConfig != "" {
		testenv.Must(t, os.WriteFile(pw.dockerConfig, []byte(s.dockerConfig), 0o600), "docker config")
	} else {
		testenv.Must(t, os.WriteFile(pw.dockerConfig, []byte(`{}`), 0o600), "docker config")
	}
	deny := s.deny
	if deny == nil {
		deny = registry.DefaultDenyCIDRs()
	}
	ns := testenv.StartNATS(t)
	testworker.Start(t, testworker.Config{
		NATSURL: ns.ClientURL(),
		Logger:  s.log,
		Config: worker.Config{
			// The folder, as Kubewarden's --docker-config-json-path takes it.
			DockerConfig:    dir,
			Sources:         srcPath,
			DenyCIDRs:       deny,
			AllowRegistries: s.allow,
			Lookup:          testLookup,
			Platform:        v1.Platform{OS: "linux", Architecture: "amd64"},
		},
	})
	pw.cli = testenv.Client(t, ns.ClientURL())
	return pw
}

func dockerConfigFor(host, user, pass string) string {
	return `{"auths":{"` + host + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + `"}}}`
}

func sourceAuthority(host string, ca *testenv.CA) string {
	var b strings.Builder
	fmt.Fprintf(&b, "source_authorities:\n  %q:\n    - type: Data\n      data: |\n", host)
	for _, l := range strings.Split(strings.TrimSpace(string(ca.CertPEM)), "\n") {
		b.WriteString("        " + l + "\n")
	}
	return b.String()
}

// capturedLogger returns a logger keeping every entry, at every level, and
// a function giving them all as JSON lines, fields included.
func capturedLogger(t *testing.T) (*zap.Logger, func() string) {
	t.Helper()
	core, obs := observer.New(zapcore.DebugLevel)
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(core), func() string {
		var b strings.Builder
		for _, e := range obs.All() {
			buf, err := enc.EncodeEntry(e.Entry, e.Context)
			testenv.Must(t, err, "encoding a log entry")
			b.Write(buf.Bytes())
			buf.Free()
		}
		return b.String()
	}
}

// checkAll checks the three functions for image against the bytes the
// registry holds.
func checkAll(t *testing.T, cli *client.Client, image, digest string, manifest, config []byte) {
	t.Helper()
	for _, c := range []struct {
		fn   contract.Function
		want []byte
	}{
		{contract.ManifestDigest, []byte(`{"digest":"` + digest + `"}`)},
		{contract.OCIManifest, manifest},
		{contract.OCIManifestConfig, config},
	} {
		r, err := cli.Image(context.Background(), c.fn, image)
		if err != nil {
			t.Fatalf("%s %s: %v", c.fn, image, err)
		}
		if !bytes.Equal(r.Body, c.want) {
			t.Errorf("%s %s: body differs\n got: %s\nwant: %s", c.fn, image, r.Body, c.want)
		}
	}
}

func wantError(t *testing.T, cli *client.Client, image string, code int, contains ...string) string {
	t.Helper()
	_, err := cli.Image(context.Background(), contract.ManifestDigest, image)
	var ce *contract.Error
	if !errors.As(err, &ce) {
		t.Fatalf("%s: want error %d, got %v", image, code, err)
	}
	if ce.Code != code {
		t.Fatalf("%s: want code %d, got %d: %s", image, code, ce.Code, ce.Message)
	}
	t.Logf("%s: error %d: %s", image, ce.Code, ce.Message)
	for _, c := range contains {
		if !strings.Contains(ce.Message, c) {
			t.Errorf("%s: message %q does not contain %q", image, ce.Message, c)
		}
	}
	return ce.Message
}

// secureRegistry is mode 1's registry: HTTPS with a certificate from a
// test CA, htpasswd auth for alice.
type secureRegistry struct {
	host   string // secure.regcap.test:PORT
	ca     *testenv.CA
	index  testenv.Index
	single testenv.Image
}

const alicePassword = "alice-s3cret-pw"

func startSecureRegistry(t *testing.T) *secureRegistry {
	t.Helper()
	ca := testenv.NewCA(t)
	d := testenv.StartDistribution(t, testenv.DistributionConfig{
		CA: ca, TLSHosts: []string{"secure.regcap.test"},
		Users: map[string]string{"alice": alicePassword},
	})
	return &secureRegistry{
		host:   "secure.regcap.test:" + strconv.Itoa(d.Port),
		ca:     ca,
		index:  d.Pusher.PushMultiPlatform(t, "team/app", "v1", testenv.OCIIndex),
		single: d.Pusher.PushImage(t, "team/tool", "v2", testenv.DockerManifest, "linux/amd64"),
	}
}

func (s *secureRegistry) checkFixtures(t *testing.T, cli *client.Client) {
	t.Helper()
	checkAll(t, cli, s.host+"/team/app:v1", s.index.Digest, s.index.Body, testenv.ConfigReply(s.index.Images[0]))
	checkAll(t, cli, s.host+"/team/tool:v2", s.single.Digest, s.single.Manifest, testenv.ConfigReply(s.single))
	// By digest too.
	checkAll(t, cli, s.host+"/team/app@"+s.index.Images[1].Digest, s.index.Images[1].Digest,
		s.index.Images[1].Manifest, testenv.ConfigReply(s.index.Images[1]))
}

// Mode 1 and 2: HTTPS with a private CA and htpasswd auth.
func TestDistributionTLSAndCredentials(t *testing.T) {
	reg := startSecureRegistry(t)
	image := reg.host + "/team/app:v1"

	t.Run("right credentials", func(t *testing.T) {
		w := startPrivateWorker(t, setup{
			sources:      sourceAuthority(reg.host, reg.ca),
			dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword),
		})
		reg.checkFixtures(t, w.cli)
		// An unknown tag: distribution's own error code and message, one
		// line, without ggcr's %v of the detail ("map[Tag:nope]").
		msg := wantError(t, w.cli, reg.host+"/team/app:nope", 404, "MANIFEST_UNKNOWN: manifest unknown")
		if strings.Contains(msg, "map[") {
			t.Errorf("404 message shows a Go map: %q", msg)
		}
	})
	t.Run("wrong credentials", func(t *testing.T) {
		const wrong = "not-the-password"
		log, logs := capturedLogger(t)
		w := startPrivateWorker(t, setup{
			sources:      sourceAuthority(reg.host, reg.ca),
			dockerConfig: dockerConfigFor(reg.host, "alice", wrong),
			log:          log,
		})
		msg := wantError(t, w.cli, image, 401, "refused the credentials configured for it", reg.host)
		basic := base64.StdEncoding.EncodeToString([]byte("alice:" + wrong))
		for _, secret := range []string{wrong, basic, "alice"} {
			if strings.Contains(msg, secret) {
				t.Errorf("message shows credentials (%q): %q", secret, msg)
			}
		}
		// The failure is logged just after the reply is sent; the
		// check means something only once it is there.
		var all string
		testenv.Eventually(t, "the failed request in the worker's logs", func() bool {
			all = logs()
			return strings.Contains(all, "request failed") && strings.Contains(all, reg.host)
		})
		for _, secret := range []string{wrong, basic} {
			if strings.Contains(all, secret) {
				t.Errorf("the worker's logs show the password (%q):\n%s", secret, all)
			}
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		w := startPrivateWorker(t, setup{
			sources: sourceAuthority(reg.host, reg.ca),
			// Credentials for another registry only: they must not be sent here.
			dockerConfig: dockerConfigFor("other.regcap.test", "alice", alicePassword),
		})
		wantError(t, w.cli, image, 401, "none were found", reg.host)
	})
	t.Run("unknown CA", func(t *testing.T) {
		w := startPrivateWorker(t, setup{dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword)})
		wantError(t, w.cli, image, 502, "TLS handshake with "+reg.host, "source_authorities", "insecure_sources")
	})
	t.Run("insecure source over TLS", func(t *testing.T) {
		// insecure_sources: HTTPS without verification comes first.
		w := startPrivateWorker(t, setup{
			sources:      "insecure_sources: [" + reg.host + "]\n",
			dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword),
		})
		reg.checkFixtures(t, w.cli)
	})
	t.Run("CA from a file, DER", func(t *testing.T) {
		der := filepath.Join(t.TempDir(), "ca.der")
		testenv.Must(t, os.WriteFile(der, reg.ca.Cert.Raw, 0o600), "ca")
		w := startPrivateWorker(t, setup{
			sources:      fmt.Sprintf(`{"source_authorities":{%q:[{"type":"Path","path":%q}]}}`, reg.host, der),
			dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword),
		})
		reg.checkFixtures(t, w.cli)
	})
}

// The credentials file changes while the worker runs (a mounted secret
// rotates): the next miss uses the new credentials, without a restart.
func TestDistributionRotatedCredentials(t *testing.T) {
	reg := startSecureRegistry(t)
	image := reg.host + "/team/app:v1"
	w := startPrivateWorker(t, setup{
		sources:      sourceAuthority(reg.host, reg.ca),
		dockerConfig: dockerConfigFor(reg.host, "alice", "old-password"),
	})
	wantError(t, w.cli, image, 401, "refused the credentials")

	// Replace the file the way the kubelet does: write aside, rename over.
	tmp := w.dockerConfig + ".new"
	testenv.Must(t, os.WriteFile(tmp, []byte(dockerConfigFor(reg.host, "alice", alicePassword)), 0o600), "new config")
	testenv.Must(t, os.Rename(tmp, w.dockerConfig), "rotating")
	// Errors are not cached: once the worker has re-read the file (at
	// most a second later), the same request succeeds.
	testenv.Eventually(t, "the rotated credentials to be used", func() bool {
		_, err := w.cli.Digest(context.Background(), image)
		return err == nil
	})
	reg.checkFixtures(t, w.cli)
}

// Mode 3: plain HTTP under a name that is not loopback, allowed only
// through insecure_sources.
func TestDistributionInsecureSource(t *testing.T) {
	d := testenv.StartDistribution(t, testenv.DistributionConfig{})
	host := "plain.regcap.test:" + strconv.Itoa(d.Port)
	idx := d.Pusher.PushMultiPlatform(t, "lib/app", "v3", testenv.DockerList)
	img := d.Pusher.PushImage(t, "lib/one", "latest", testenv.OCIManifest, "linux/amd64")

	t.Run("listed", func(t *testing.T) {
		w := startPrivateWorker(t, setup{sources: "insecure_sources:\n  - " + host + "\n"})
		checkAll(t, w.cli, host+"/lib/app:v3", idx.Digest, idx.Body, testenv.ConfigReply(idx.Images[0]))
		checkAll(t, w.cli, host+"/lib/one", img.Digest, img.Manifest, testenv.ConfigReply(img))
	})
	t.Run("not listed", func(t *testing.T) {
		w := startPrivateWorker(t, setup{})
		wantError(t, w.cli, host+"/lib/app:v3", 502, "plain.regcap.test", "insecure_sources")
	})
}

// A name resolving to a denied address is refused at dial time: 403, and
// the address sees no connection. The denied address is loopback
// (127.0.0.5), never a real metadata address: a broken guard would
// really connect.
func TestGuardDeniesResolvedAddress(t *testing.T) {
	cl := testenv.ListenCounting(t, "127.0.0.5:0")
	port := cl.Port()
	w := startPrivateWorker(t, setup{
		deny:    []string{"127.0.0.5/32"},
		sources: "insecure_sources:\n  - denied.regcap.test:" + port + "\n",
	})
	wantError(t, w.cli, "denied.regcap.test:"+port+"/x/y:z", 403, "refused by policy", "127.0.0.5", "--deny-cidrs")
	wantError(t, w.cli, "127.0.0.5:"+port+"/x/y:z", 403, "refused by policy")
	if n := cl.CountBefore(t); n != 0 {
		t.Fatalf("denied address saw %d connections, want 0", n)
	}
}

// A registry outside --allow-registries is refused before any connection.
func TestGuardAllowList(t *testing.T) {
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "ok/app", "v1", testenv.OCIManifest, "linux/amd64")
	reg.ResetCounts()
	w := startPrivateWorker(t, setup{allow: []string{"ghcr.io", "*.example.com"}})
	wantError(t, w.cli, reg.Ref("ok/app", "v1"), 403, "not in the allowed registries", reg.Host)
	if c := reg.Counts(); len(c) != 0 {
		t.Fatalf("refused registry got requests: %v", c)
	}

	allowed := startPrivateWorker(t, setup{allow: []string{"127.0.0.1:*"}})
	checkAll(t, allowed.cli, reg.Ref("ok/app", "v1"), img.Digest, img.Manifest, testenv.ConfigReply(img))
}
