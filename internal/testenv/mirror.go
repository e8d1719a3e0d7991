package testenv

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// PullThroughCache is a CNCF distribution registry running as a
// pull-through cache (proxy.remoteurl) of another registry: what clusters
// run as a Docker Hub mirror.
type PullThroughCache struct {
	// Host is its host:port (plain HTTP on loopback).
	Host string
}

// StartPullThroughCache starts Debian's docker-registry as a pull-through
// cache of remoteURL (e.g. "http://127.0.0.1:5000"), on a free loopback
// port, until the test ends. It fetches from remoteURL what it is asked
// for and does not have, and keeps it.
func StartPullThroughCache(t testing.TB, remoteURL string) *PullThroughCache {
	t.Helper()
	bin := LookPath(t, "docker-registry", "docker-registry")
	dir := t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"+
		"storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"+
		"http:\n  addr: %s\n  secret: regcap-test-secret\n  relativeurls: true\n"+
		"proxy:\n  remoteurl: %s\n", filepath.Join(dir, "data"), addr, remoteURL)
	write(t, filepath.Join(dir, "config.yml"), []byte(conf))
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	Must(t, cmd.Start(), "starting %s", bin)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("docker-registry (pull-through cache) exited at start-up:\n%s", out.String())
		default:
		}
		resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pull-through cache on %s did not answer /v2/: %v\n%s", addr, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &PullThroughCache{Host: addr}
}
