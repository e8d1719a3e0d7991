package resolve

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
)

// TestRedisOutage: with Redis down, cached and new images alike are
// answered (new ones from the registry), and RedisAvailable (the
// worker's regcap_redis_available gauge) says so; once Redis is back,
// answers reach it again, so that another resolver finds them. The outage
// and its end are logged once each, not once per request.
func TestRedisOutage(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	f := startFleet(t, 0, 0)
	r := f.addWith(t, 0, []rediscache.Option{rediscache.WithLogger(zap.New(core))})
	var imgs []testenv.Image
	for i := range 6 {
		imgs = append(imgs, f.reg.PushImage(t, "outage", fmt.Sprintf("v%d", i), testenv.OCIManifest, "linux/amd64"))
	}
	ref := func(i int) string { return f.reg.Ref("outage", fmt.Sprintf("v%d", i)) }
	mustAnswer(t, r, request(contract.OCIManifest, ref(0)))

	f.redis.Stop()
	// Cached and new images alike are answered; new ones from the registry.
	for i := range 4 {
		for range 2 {
			if a := mustAnswer(t, r, request(contract.OCIManifest, ref(i))); !bytes.Equal(a.Body, imgs[i].Manifest) {
				t.Fatalf("during the outage, image %d: %s", i, a.Body)
			}
		}
	}
	if r.RedisAvailable() {
		t.Error("during the outage RedisAvailable does not say so")
	}

	f.redis.Start()
	// The resolver shares again: during an outage it probes Redis once a
	// second, so within a few requests a new answer reaches Redis again.
	rdb := f.redis.Client(t)
	next := 5
	testenv.Eventually(t, "a new answer to reach redis", func() bool {
		tag := fmt.Sprintf("after%d", next)
		img := f.reg.PushImage(t, "outage", tag, testenv.OCIManifest, "linux/amd64")
		mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("outage", tag)))
		key := "regcap:v2:oci_manifest:" + f.reg.Ref("outage", tag)
		raw, err := rdb.Get(context.Background(), key).Bytes()
		v, _, derr := rediscache.DecodeValue(key, raw, nil)
		if err == nil && derr == nil && bytes.Equal(v, img.Manifest) {
			imgs[5] = img
			return true
		}
		next++
		time.Sleep(100 * time.Millisecond)
		return false
	})
	ref5 := f.reg.Ref("outage", fmt.Sprintf("after%d", next))
	if !r.RedisAvailable() {
		t.Fatal("after the outage RedisAvailable still says Redis is unavailable")
	}
	// One outage, one warning and one recovery line: not one per request.
	if n := logs.FilterMessageSnippet("redis unavailable").Len(); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("redis available again").Len(); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	other := f.add(t, 0, WithMemory(0))
	if a := mustAnswer(t, other, request(contract.OCIManifest, ref5)); a.Outcome != contract.Hit || !bytes.Equal(a.Body, imgs[5].Manifest) {
		t.Fatalf("after redis came back, another resolver: cache %q", a.Outcome)
	}
}

// TestBlackholedRedis: a Redis that accepts connections and never answers
// costs the first request its command timeout; after that the resolver
// only probes it once a second, so requests are served from the registry
// without waiting on it.
func TestBlackholedRedis(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	testenv.Must(t, err, "listen")
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		silent.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	f := &fleet{reg: testenv.StartRegistry(t), url: "redis://" + silent.Addr().String()}
	r := f.add(t, 0)
	const n = 20
	for i := range n {
		img := f.reg.PushImage(t, "blackhole", fmt.Sprint(i), testenv.OCIManifest, "linux/amd64")
		if a := mustAnswer(t, r, request(contract.OCIManifest, f.reg.Ref("blackhole", fmt.Sprint(i)))); !bytes.Equal(a.Body, img.Manifest) {
			t.Fatalf("request %d: %s", i, a.Body)
		}
	}
	// Without the outage gate each request would try three commands, each
	// on a new connection after the previous one timed out.
	mu.Lock()
	got := len(conns)
	mu.Unlock()
	if got >= n {
		t.Fatalf("%d connections to a dead redis for %d requests: the outage is not short-circuited", got, n)
	}
}
