package registry_test

import (
	"strconv"
	"testing"

	"github.com/regcap/regcap/internal/testenv"
)

// Plain HTTP under a name that is not loopback is allowed only through
// insecure_sources; otherwise the fetch fails saying how to allow it.
func TestDistributionInsecureSource(t *testing.T) {
	d := testenv.StartDistribution(t, testenv.DistributionConfig{})
	host := "plain.regcap.test:" + strconv.Itoa(d.Port)
	idx := d.Pusher.PushMultiPlatform(t, "lib/app", "v3", testenv.DockerList)
	img := d.Pusher.PushImage(t, "lib/one", "latest", testenv.OCIManifest, "linux/amd64")

	t.Run("listed", func(t *testing.T) {
		p := newPuller(t, pullerSetup{sources: "insecure_sources:\n  - " + host + "\n"})
		checkAll(t, p, host+"/lib/app:v3", idx.Digest, idx.Body, testenv.ConfigReply(idx.Images[0]))
		checkAll(t, p, host+"/lib/one", img.Digest, img.Manifest, testenv.ConfigReply(img))
	})
	t.Run("not listed", func(t *testing.T) {
		p := newPuller(t, pullerSetup{})
		wantError(t, p, host+"/lib/app:v3", 502, "plain.regcap.test", "insecure_sources")
	})
}
