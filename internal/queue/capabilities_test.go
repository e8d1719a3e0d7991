package queue_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/testworker"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// fleet is one NATS server, one registry and one worker on loopback.
type fleet struct {
	reg     *testenv.Registry
	natsURL string
	worker  *testworker.Worker
	cli     *client.Client
}

func newFleet(t *testing.T, cfg testworker.Config) *fleet {
	t.Helper()
	ns := testenv.StartNATS(t)
	cfg.NATSURL = ns.ClientURL()
	f := &fleet{reg: testenv.StartRegistry(t), natsURL: ns.ClientURL()}
	f.worker = testworker.Start(t, cfg)
	f.cli = testenv.Client(t, ns.ClientURL())
	return f
}

func call(t *testing.T, c *client.Client, fn contract.Function, image string, opts ...client.CallOption) *client.Reply {
	t.Helper()
	r, err := c.Image(context.Background(), fn, image, opts...)
	if err != nil {
		t.Fatalf("%s %s: %v", fn, image, err)
	}
	return r
}

func wantCode(t *testing.T, err error, code int, contains string) {
	t.Helper()
	var ce *contract.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want error %d, got %v", code, err)
	}
	if ce.Code != code {
		t.Fatalf("want code %d, got %d: %s", code, ce.Code, ce.Message)
	}
	if !strings.Contains(ce.Message, contains) {
		t.Fatalf("message %q does not contain %q", ce.Message, contains)
	}
	if strings.ContainsAny(ce.Message, "\r\n") {
		t.Fatalf("message is not one line: %q", ce.Message)
	}
}

func digestBody(d string) []byte { return []byte(`{"digest":"` + d + `"}`) }

// TestCapabilitiesByteForByte checks every function on every manifest
// kind against the bytes the registry holds.
func TestCapabilitiesByteForByte(t *testing.T) {
	f := newFleet(t, testworker.Config{Config: worker.Config{Platform: mustPlatform(t, "linux/amd64")}})
	ociIdx := f.reg.PushMultiPlatform(t, "multi/oci", "v1", testenv.OCIIndex)
	dockerList := f.reg.PushMultiPlatform(t, "multi/docker", "v1", testenv.DockerList)
	ociImg := f.reg.PushImage(t, "single/oci", "v1", testenv.OCIManifest, "linux/amd64")
	dockerImg := f.reg.PushImage(t, "single/docker", "v1", testenv.DockerManifest, "linux/amd64")

	if len(ociIdx.Images) != 4 || ociIdx.Images[2].Platform != "unknown/unknown" {
		t.Fatalf("fixture: want amd64, arm64 and two attestations, got %d entries", len(ociIdx.Images))
	}

	cases := []struct {
		name     string
		image    string
		digest   string
		manifest []byte
		config   []byte
	}{
		{"oci index", f.reg.Ref("multi/oci", "v1"), ociIdx.Digest, ociIdx.Body, testenv.ConfigReply(ociIdx.Images[0])},
		{"docker manifest list", f.reg.Ref("multi/docker", "v1"), dockerList.Digest, dockerList.Body, testenv.ConfigReply(dockerList.Images[0])},
		{"oci image manifest", f.reg.Ref("single/oci", "v1"), ociImg.Digest, ociImg.Manifest, testenv.ConfigReply(ociImg)},
		{"docker schema2 manifest", f.reg.Ref("single/docker", "v1"), dockerImg.Digest, dockerImg.Manifest, testenv.ConfigReply(dockerImg)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				fn   contract.Function
				want []byte
			}{
				{contract.ManifestDigest, digestBody(tc.digest)},
				{contract.OCIManifest, tc.manifest},
				{contract.OCIManifestConfig, tc.config},
			} {
				r := call(t, f.cli, c.fn, tc.image)
				if !bytes.Equal(r.Body, c.want) {
					t.Errorf("%s: body differs\n got: %s\nwant: %s", c.fn, r.Body, c.want)
				}
				if r.Cache != contract.Miss {
					t.Errorf("%s: Regcap-Cache %q, want miss", c.fn, r.Cache)
				}
			}
			// oci_manifest's body hashes to the digest.
			if got := testenv.Digest(call(t, f.cli, contract.OCIManifest, tc.image).Body); got != tc.digest {
				t.Errorf("manifest hashes to %s, digest is %s", got, tc.digest)
			}
		})
	}
}

func mustPlatform(t *testing.T, s string) handlersPlatform {
	t.Helper()
	p, err := handlers.ParsePlatform(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type handlersPlatform = v1.Platform
