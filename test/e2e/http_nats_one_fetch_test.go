package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestHTTPAndNATSOneFetch: one image asked for at the same time over NATS
// and over HTTP costs one upstream fetch: both fronts share one
// resolver.
func TestHTTPAndNATSOneFetch(t *testing.T) {
	a := startHTTPAPI(t, worker.Config{})
	img := a.reg.PushImage(t, "both/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := a.reg.Ref("both/app", "v1")
	gate := a.reg.Hold("/both/app/manifests/")
	cli := testenv.Client(t, a.nats)
	errs := make(chan error, 2)
	go func() {
		_, err := cli.Image(context.Background(), contract.ManifestDigest, ref)
		errs <- err
	}()
	go func() {
		code, _, body := httpGet(t, a.client, a.url+"/v1/manifest_digest?image="+ref)
		if code != 200 || string(body) != `{"digest":"`+img.Digest+`"}` {
			errs <- fmt.Errorf("HTTP %d %s", code, body)
			return
		}
		errs <- nil
	}()
	testenv.Eventually(t, "both requests pending", func() bool { return a.w.Pending() == 2 })
	gate.Release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := a.reg.CountManifest("HEAD", "both/app", "v1"); n != 1 {
		t.Errorf("%d HEADs for one image asked over NATS and HTTP at once, want 1", n)
	}
}
