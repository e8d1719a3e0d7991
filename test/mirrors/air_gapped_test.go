package mirrors

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// Air-gapped: the registry's address is a counting listener that must see
// no connection; the mirror answers what it holds, and an image it lacks
// is a fast 404 naming the mirror, not a timeout.
func TestAirGappedWorkerNeverContactsTheRegistry(t *testing.T) {
	upstream := testenv.ListenCounting(t, "127.0.0.1:0")
	src := testenv.StartRegistry(t)
	img := src.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	mirror := testenv.StartRegistry(t)
	copyImage(t, mirror, "team/app", "v1", img)
	for _, tc := range []struct {
		name string
		cfg  worker.Config
	}{
		{"--mirrors-only", worker.Config{HostsDir: hostsDir(t, upstream.Addr(), mirrorLine(mirror.Host)), MirrorsOnly: true}},
		{"server set to the mirror", worker.Config{HostsDir: hostsDir(t, upstream.Addr(), "server = \"http://"+mirror.Host+"\"\n")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.FetchTimeout = 10 * time.Second
			c := startWorker(t, "", tc.cfg)
			r, err := digestOf(t, c, upstream.Addr()+"/team/app:v1")
			if err != nil || string(r.Body) != `{"digest":"`+img.Digest+`"}` {
				t.Fatalf("present image: %v", err)
			}
			start := time.Now()
			_, err = digestOf(t, c, upstream.Addr()+"/team/missing:v1")
			took := time.Since(start)
			var ce *contract.Error
			if !errors.As(err, &ce) || ce.Code != 404 || !strings.Contains(ce.Message, mirror.Host) {
				t.Fatalf("missing image: %v, want a 404 naming the mirror %s", err, mirror.Host)
			}
			if n := upstream.CountBefore(t); n != 0 {
				t.Fatalf("the registry got %d connections", n)
			}
			t.Logf("missing image: 404 in %s: %s", took.Round(time.Millisecond), ce.Message)
		})
	}
	// --mirrors-only and a registry with no mirror: 403 before any
	// network activity.
	c := startWorker(t, "", worker.Config{HostsDir: hostsDir(t, upstream.Addr(), mirrorLine(mirror.Host)), MirrorsOnly: true})
	other := testenv.ListenCounting(t, "127.0.0.1:0")
	var ce *contract.Error
	if _, err := digestOf(t, c, other.Addr()+"/team/app:v1"); !errors.As(err, &ce) || ce.Code != 403 {
		t.Fatalf("registry without a mirror: %v, want 403", err)
	}
	if n := other.CountBefore(t); n != 0 {
		t.Fatalf("a registry without a mirror got %d connections", n)
	}
}
