package registry_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// The tests against the CNCF distribution registry reach it under names
// in the reserved .test TLD ("secure.regcap.test"), which no real
// resolver answers. The transports resolve them through a test lookup
// (registry.WithLookup) to loopback addresses, so that:
//   - the registry is "non-loopback-looking": the Puller treats the name
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

// pullerSetup is what a Puller is built from: file contents, written to
// a temporary folder, and the guard's lists.
type pullerSetup struct {
	sources      string   // sources.yaml content; "" for none
	dockerConfig string   // config.json content; "" for an empty one
	deny         []string // nil: registry.DefaultDenyCIDRs()
	allow        []string
	log          *zap.Logger // the Fetcher's logger; nil: none
}

// testPuller is a Puller over the registry package's production pieces
// (DockerConfig, Sources, Guard, Transports), wired as the worker wires
// them, and the Fetcher that answers the capabilities from it.
type testPuller struct {
	*registry.Puller
	fetcher      *handlers.Fetcher
	dockerConfig string // path of the docker config file
}

func newPuller(t *testing.T, s pullerSetup) *testPuller {
	t.Helper()
	dir := t.TempDir()
	tp := &testPuller{dockerConfig: filepath.Join(dir, "config.json")}
	src := &registry.Sources{}
	if s.sources != "" {
		p := filepath.Join(dir, "sources.yaml")
		testenv.Must(t, os.WriteFile(p, []byte(s.sources), 0o600), "sources")
		var err error
		src, err = registry.LoadSources(p)
		testenv.Must(t, err, "loading sources")
	}
	cfg := s.dockerConfig
	if cfg == "" {
		cfg = `{}`
	}
	testenv.Must(t, os.WriteFile(tp.dockerConfig, []byte(cfg), 0o600), "docker config")
	// The folder, as Kubewarden's --docker-config-json-path names it.
	kc, err := registry.LoadDockerConfig(dir)
	testenv.Must(t, err, "loading the docker config")
	deny := s.deny
	if deny == nil {
		deny = registry.DefaultDenyCIDRs()
	}
	guard, err := registry.NewGuard(deny, s.allow)
	testenv.Must(t, err, "guard")
	tr := registry.NewTransports(registry.WithSources(src), registry.WithDialGuard(guard), registry.WithLookup(testLookup))
	t.Cleanup(tr.CloseIdleConnections)
	tp.Puller = registry.New(
		registry.WithKeychain(kc),
		registry.WithInsecure(src.Insecure),
		registry.WithRegistryCheck(guard.CheckRegistry),
		registry.WithBaseTransport(tr.For),
	)
	log := s.log
	if log == nil {
		log = zap.NewNop()
	}
	tp.fetcher = handlers.NewFetcher(tp.Puller, handlers.WithLogger(log))
	return tp
}

// fetch answers fn for image as a worker would: the payload parsed by
// ParseRequest, the answer (or its *contract.Error) from the Fetcher.
// Indexes resolve to linux/amd64.
func (tp *testPuller) fetch(t *testing.T, fn contract.Function, image string) ([]byte, error) {
	t.Helper()
	payload, err := json.Marshal(image)
	testenv.Must(t, err, "payload")
	req, err := handlers.ParseRequest(fn, payload, "", v1.Platform{OS: "linux", Architecture: "amd64"})
	testenv.Must(t, err, "request for %s", image)
	return tp.fetcher.Fetch(context.Background(), req)
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

// checkAll checks the three functions for image against the bytes the
// registry holds.
func checkAll(t *testing.T, tp *testPuller, image, digest string, manifest, config []byte) {
	t.Helper()
	for _, c := range []struct {
		fn   contract.Function
		want []byte
	}{
		{contract.ManifestDigest, []byte(`{"digest":"` + digest + `"}`)},
		{contract.OCIManifest, manifest},
		{contract.OCIManifestConfig, config},
	} {
		body, err := tp.fetch(t, c.fn, image)
		if err != nil {
			t.Fatalf("%s %s: %v", c.fn, image, err)
		}
		if !bytes.Equal(body, c.want) {
			t.Errorf("%s %s: body differs\n got: %s\nwant: %s", c.fn, image, body, c.want)
		}
	}
}

// wantError asks manifest_digest for image and checks the contract error
// it fails with: its code, and what its message says. It returns the
// message, the text a worker answers and logs.
func wantError(t *testing.T, tp *testPuller, image string, code int, contains ...string) string {
	t.Helper()
	_, err := tp.fetch(t, contract.ManifestDigest, image)
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

// secureRegistry is a distribution registry serving HTTPS with a
// certificate from a test CA, and htpasswd auth for alice.
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

func (s *secureRegistry) checkFixtures(t *testing.T, tp *testPuller) {
	t.Helper()
	checkAll(t, tp, s.host+"/team/app:v1", s.index.Digest, s.index.Body, testenv.ConfigReply(s.index.Images[0]))
	checkAll(t, tp, s.host+"/team/tool:v2", s.single.Digest, s.single.Manifest, testenv.ConfigReply(s.single))
	// By digest too.
	checkAll(t, tp, s.host+"/team/app@"+s.index.Images[1].Digest, s.index.Images[1].Digest,
		s.index.Images[1].Manifest, testenv.ConfigReply(s.index.Images[1]))
}
