package e2e

import (
	"bytes"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// TestCapabilitiesByteForByte checks every function on every manifest
// kind against the bytes the registry holds, as a NATS client receives
// them from a worker.
func TestCapabilitiesByteForByte(t *testing.T) {
	f := startNATSFleet(t, testworker.Config{Config: worker.Config{Platform: mustPlatform(t, "linux/amd64")}})
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
				{contract.ManifestDigest, digestReply(tc.digest)},
				{contract.OCIManifest, tc.manifest},
				{contract.OCIManifestConfig, tc.config},
			} {
				r := natsCall(t, f.cli, c.fn, tc.image)
				if !bytes.Equal(r.Body, c.want) {
					t.Errorf("%s: body differs\n got: %s\nwant: %s", c.fn, r.Body, c.want)
				}
				if r.Cache != contract.Miss {
					t.Errorf("%s: Regcap-Cache %q, want miss", c.fn, r.Cache)
				}
			}
			// oci_manifest's body hashes to the digest.
			if got := testenv.Digest(natsCall(t, f.cli, contract.OCIManifest, tc.image).Body); got != tc.digest {
				t.Errorf("manifest hashes to %s, digest is %s", got, tc.digest)
			}
		})
	}
}
