package mirrors

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/mirrors"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

func manifestRequests(r *testenv.Registry) int {
	return r.Count("HEAD", "manifest") + r.Count("GET", "manifest")
}

// A hosts.toml that changes is read again without a restart, and so is a
// registries.conf: a new mirror is used, a new block refuses.
func TestMirrorConfigReloadsWithoutRestart(t *testing.T) {
	testenv.Long(t, "waits twice for the files' check interval")
	up := testenv.StartRegistry(t)
	x := up.PushImage(t, "team/x", "v1", testenv.OCIManifest, "linux/amd64")
	y := up.PushImage(t, "team/y", "v1", testenv.OCIManifest, "linux/amd64")
	m1, m2 := testenv.StartRegistry(t), testenv.StartRegistry(t)
	for _, m := range []*testenv.Registry{m1, m2} {
		copyImage(t, m, "team/x", "v1", x)
		copyImage(t, m, "team/y", "v1", y)
	}
	dir := hostsDir(t, up.Host, mirrorLine(m1.Host))
	conf := filepath.Join(t.TempDir(), "registries.conf")
	testenv.Must(t, os.WriteFile(conf, []byte(""), 0o644), "write")
	c := startWorker(t, "", worker.Config{HostsDir: dir, RegistriesConf: conf})

	if _, err := digestOf(t, c, up.Ref("team/x", "v1")); err != nil {
		t.Fatal(err)
	}
	if manifestRequests(m1) != 1 || manifestRequests(m2) != 0 {
		t.Fatalf("before the change: m1 %d, m2 %d requests", manifestRequests(m1), manifestRequests(m2))
	}
	writeHosts(t, dir, up.Host, mirrorLine(m2.Host))
	// Files are checked on use, at most every check interval.
	time.Sleep(mirrors.DefaultCheckInterval + 100*time.Millisecond)
	if _, err := digestOf(t, c, up.Ref("team/y", "v1")); err != nil {
		t.Fatal(err)
	}
	if manifestRequests(m1) != 1 || manifestRequests(m2) != 1 {
		t.Fatalf("after the change: m1 %d, m2 %d requests, want 1 and 1", manifestRequests(m1), manifestRequests(m2))
	}
	testenv.Must(t, os.WriteFile(conf, []byte("[[registry]]\nlocation = \""+up.Host+"/team\"\nblocked = true\n"), 0o644), "write")
	time.Sleep(mirrors.DefaultCheckInterval + 100*time.Millisecond)
	before := len(up.Counts()) + manifestRequests(m1) + manifestRequests(m2)
	if _, err := digestOf(t, c, up.Ref("team/z", "v1")); err == nil {
		t.Fatal("a blocked image was answered")
	} else if got := err.Error(); !strings.Contains(got, "blocked") {
		t.Fatalf("blocked: %v", err)
	}
	if after := len(up.Counts()) + manifestRequests(m1) + manifestRequests(m2); after != before {
		t.Fatal("a blocked image made requests")
	}
}
