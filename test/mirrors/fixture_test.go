package mirrors

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

func TestMain(m *testing.M) {
	testenv.QuietRedisLogs()
	os.Exit(m.Run())
}

// hostsDir writes hosts.toml for registry (host:port) into a new
// containerd hosts directory and returns the directory.
func hostsDir(t testing.TB, registry, toml string) string {
	t.Helper()
	dir := t.TempDir()
	writeHosts(t, dir, registry, toml)
	return dir
}

func writeHosts(t testing.TB, dir, registry, toml string) {
	t.Helper()
	folder := filepath.Join(dir, strings.Replace(registry, ":", "_", 1)+"_")
	testenv.Must(t, os.MkdirAll(folder, 0o755), "mkdir")
	// Written aside and renamed, as a ConfigMap update is: never half a file.
	tmp := filepath.Join(folder, ".hosts.toml.tmp")
	testenv.Must(t, os.WriteFile(tmp, []byte(toml), 0o644), "write")
	testenv.Must(t, os.Rename(tmp, filepath.Join(folder, "hosts.toml")), "rename")
}

func mirrorLine(host string) string { return "[host.\"http://" + host + "\"]\n" }

// startWorker starts a worker on its own NATS server and returns a client
// of it.
func startWorker(t testing.TB, redisAddr string, cfg worker.Config) *client.Client {
	t.Helper()
	ns := testenv.StartNATS(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), RedisAddr: redisAddr, Config: cfg})
	return testenv.Client(t, ns.ClientURL())
}

func digestOf(t testing.TB, c *client.Client, image string) (*client.Reply, error) {
	t.Helper()
	return c.Image(context.Background(), contract.ManifestDigest, image)
}

// copyImage puts img, byte for byte, into dst as repo:tag.
func copyImage(t testing.TB, dst *testenv.Registry, repo, tag string, img testenv.Image) {
	t.Helper()
	dst.PushBlob(t, repo, img.Config)
	dst.PushManifest(t, repo, img.Digest, img.MediaType, img.Manifest)
	dst.PushManifest(t, repo, tag, img.MediaType, img.Manifest)
}
