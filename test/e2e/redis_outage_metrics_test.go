package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
)

// TestRedisOutageOnTheMetrics: the worker's regcap_redis_available gauge
// says 0 while Redis is down, and 1 again once answers reach it. What the
// resolver does meanwhile is internal/resolve's TestRedisOutage.
func TestRedisOutageOnTheMetrics(t *testing.T) {
	rd := testenv.StartRedis(t)
	f := startNATSFleet(t, testworker.Config{RedisAddr: rd.Addr()})
	ref := func(tag string) string { return f.reg.Ref("outage", tag) }
	f.reg.PushImage(t, "outage", "v0", testenv.OCIManifest, "linux/amd64")
	natsCall(t, f.cli, contract.OCIManifest, ref("v0"))

	rd.Stop()
	for i := 1; i < 3; i++ {
		f.reg.PushImage(t, "outage", fmt.Sprint("v", i), testenv.OCIManifest, "linux/amd64")
		natsCall(t, f.cli, contract.OCIManifest, ref(fmt.Sprint("v", i)))
	}
	if m := scrapeMetrics(t, f.worker); !strings.Contains(m, "\nregcap_redis_available 0\n") {
		t.Errorf("during the outage the gauge does not say so:\n%s", grepLines(m, "regcap_redis_available"))
	}

	rd.Start()
	// During an outage the worker probes Redis once a second: within a
	// few requests a new answer reaches Redis again.
	rdb := rd.Client(t)
	next := 0
	testenv.Eventually(t, "a new answer to reach redis", func() bool {
		tag := fmt.Sprintf("after%d", next)
		next++
		img := f.reg.PushImage(t, "outage", tag, testenv.OCIManifest, "linux/amd64")
		natsCall(t, f.cli, contract.OCIManifest, ref(tag))
		key := "regcap:v2:oci_manifest:" + ref(tag)
		raw, err := rdb.Get(context.Background(), key).Bytes()
		v, _, derr := rediscache.DecodeValue(key, raw, nil)
		if err == nil && derr == nil && string(v) == string(img.Manifest) {
			return true
		}
		time.Sleep(100 * time.Millisecond)
		return false
	})
	if m := scrapeMetrics(t, f.worker); !strings.Contains(m, "\nregcap_redis_available 1\n") {
		t.Fatalf("after the outage the gauge still says Redis is unavailable:\n%s", grepLines(m, "regcap_redis_available"))
	}
}
