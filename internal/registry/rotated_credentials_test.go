package registry_test

import (
	"os"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// The credentials file changes while the Puller is in use (a mounted
// secret rotates): the next fetch uses the new credentials, without a
// new Puller.
func TestDistributionRotatedCredentials(t *testing.T) {
	reg := startSecureRegistry(t)
	image := reg.host + "/team/app:v1"
	p := newPuller(t, pullerSetup{
		sources:      sourceAuthority(reg.host, reg.ca),
		dockerConfig: dockerConfigFor(reg.host, "alice", "old-password"),
	})
	wantError(t, p, image, 401, "refused the credentials")

	// Replace the file the way the kubelet does: write aside, rename over.
	tmp := p.dockerConfig + ".new"
	testenv.Must(t, os.WriteFile(tmp, []byte(dockerConfigFor(reg.host, "alice", alicePassword)), 0o600), "new config")
	testenv.Must(t, os.Rename(tmp, p.dockerConfig), "rotating")
	// Errors are not kept: once the Puller has re-read the file (at most a
	// second later), the same request succeeds.
	testenv.Eventually(t, "the rotated credentials to be used", func() bool {
		_, err := p.fetch(t, contract.ManifestDigest, image)
		return err == nil
	})
	reg.checkFixtures(t, p)
}
