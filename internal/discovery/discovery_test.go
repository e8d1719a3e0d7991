package discovery_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testworker"

	"github.com/nats-io/nats.go/micro"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestDiscovery: what `nats micro ls/info/stats` ask ($SRV.PING, INFO,
// STATS) is answered with micro's types, listing the three endpoints on
// the worker's subjects and queue group, with their request and error
// counts.
func TestDiscovery(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	reg.PushImage(t, "disc/app", "v1", testenv.OCIManifest, "linux/amd64")

	// The worker's own discovery service, as worker.New wires it.
	w := testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), Config: worker.Config{Version: "1.2.3"}})
	cli := testenv.Client(t, ns.ClientURL())
	for range 2 {
		if _, err := cli.Image(context.Background(), contract.ManifestDigest, reg.Ref("disc/app", "v1")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Image(context.Background(), contract.ManifestDigest, reg.Ref("disc/app", "absent")); err == nil {
		t.Fatal("want an error for an absent tag")
	}

	nc := testenv.Connect(t, ns.ClientURL())
	ask := func(subject string, v any) {
		t.Helper()
		m, err := nc.Request(subject, nil, 5*time.Second)
		testenv.Must(t, err, "request %s", subject)
		testenv.Must(t, json.Unmarshal(m.Data, v), "decoding %s", subject)
	}

	var ping micro.Ping
	ask("$SRV.PING", &ping)
	if ping.Name != "regcap" || ping.ID != w.DiscoveryID() || ping.Type != micro.PingResponseType || ping.Version != "1.2.3" {
		t.Errorf("ping: %+v", ping)
	}

	var info micro.Info
	ask("$SRV.INFO.regcap", &info)
	want := map[string]string{
		"manifest_digest":     "kubewarden.oci.v1.manifest_digest",
		"oci_manifest":        "kubewarden.oci.v1.oci_manifest",
		"oci_manifest_config": "kubewarden.oci.v1.oci_manifest_config",
	}
	if len(info.Endpoints) != 3 {
		t.Fatalf("info endpoints: %+v", info.Endpoints)
	}
	for _, e := range info.Endpoints {
		if want[e.Name] != e.Subject || e.QueueGroup != "regcap" {
			t.Errorf("info endpoint %+v", e)
		}
	}

	// The worker counts a request once its reply is sent, so the third
	// may be counted just after the client has its answer.
	var stats micro.Stats
	testenv.Eventually(t, "the third request to be counted", func() bool {
		stats = micro.Stats{}
		ask("$SRV.STATS.regcap."+w.DiscoveryID(), &stats)
		var n int
		for _, e := range stats.Endpoints {
			n += e.NumRequests
		}
		return n >= 3
	})
	if stats.Type != micro.StatsResponseType || len(stats.Endpoints) != 3 {
		t.Fatalf("stats: %+v", stats)
	}
	for _, e := range stats.Endpoints {
		switch e.Name {
		case "manifest_digest":
			if e.NumRequests != 3 || e.NumErrors != 1 || e.LastError != "404" || e.ProcessingTime <= 0 {
				t.Errorf("manifest_digest stats %+v, want 3 requests, 1 error (404)", e)
			}
		default:
			if e.NumRequests != 0 {
				t.Errorf("%s stats %+v, want no requests", e.Name, e)
			}
		}
	}
}
