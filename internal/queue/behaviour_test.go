package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testworker"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

func TestDigestReferences(t *testing.T) {
	f := newFleet(t, testworker.Config{Config: worker.Config{Platform: mustPlatform(t, "linux/amd64")}})
	idx := f.reg.PushMultiPlatform(t, "app", "v1", testenv.OCIIndex)
	img := f.reg.PushImage(t, "plain", "v1", testenv.OCIManifest, "linux/amd64")

	for _, image := range []string{
		f.reg.Ref("app", idx.Digest),
		f.reg.Host + "/app:v1@" + idx.Digest,
		f.reg.Host + "/app:no-such-tag@" + idx.Digest, // the tag is ignored, as in Docker
	} {
		t.Run(image, func(t *testing.T) {
			if got := call(t, f.cli, contract.ManifestDigest, image).Body; !bytes.Equal(got, digestBody(idx.Digest)) {
				t.Errorf("digest: %s", got)
			}
			if got := call(t, f.cli, contract.OCIManifest, image).Body; !bytes.Equal(got, idx.Body) {
				t.Errorf("manifest differs: %s", got)
			}
			if got := call(t, f.cli, contract.OCIManifestConfig, image).Body; !bytes.Equal(got, testenv.ConfigReply(idx.Images[0])) {
				t.Errorf("config differs: %s", got)
			}
		})
	}

	// A platform manifest by digest.
	child := f.reg.Ref("app", idx.Images[1].Digest)
	if got := call(t, f.cli, contract.OCIManifestConfig, child).Body; !bytes.Equal(got, testenv.ConfigReply(idx.Images[1])) {
		t.Errorf("config of a child by digest differs: %s", got)
	}

	// An unknown digest is a 404, checked by HEAD.
	unknown := f.reg.Ref("plain", testenv.Digest([]byte("nothing")))
	_, err := f.cli.Image(context.Background(), contract.ManifestDigest, unknown)
	wantCode(t, err, 404, unknown)

	// A digest that exists under another repository is not this one's.
	_, err = f.cli.Image(context.Background(), contract.OCIManifest, f.reg.Ref("plain", idx.Digest))
	wantCode(t, err, 404, "plain@")

	_ = img
}

func TestDigestMismatchIsRefusedAndNotCached(t *testing.T) {
	f := newFleet(t, testworker.Config{})
	img := f.reg.PushImage(t, "liar", "v1", testenv.OCIManifest, "linux/amd64")
	other := f.reg.PushImage(t, "liar", "v2", testenv.OCIManifest, "linux/amd64")
	// The registry answers a request for img's digest with other's bytes.
	f.reg.Override(func(r *http.Request) bool {
		return strings.HasSuffix(r.URL.Path, "/manifests/"+img.Digest)
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", testenv.OCIManifest)
		w.Header().Set("Docker-Content-Digest", img.Digest)
		_, _ = w.Write(other.Manifest)
	}))
	ref := f.reg.Ref("liar", img.Digest)
	for i := 0; i < 2; i++ {
		_, err := f.cli.Image(context.Background(), contract.OCIManifest, ref)
		wantCode(t, err, 502, "digest mismatch")
	}
	if n := f.reg.Count("GET", "manifest"); n != 2 {
		t.Errorf("the error was cached: %d GETs for 2 requests", n)
	}
}

func TestPlatformHeader(t *testing.T) {
	f := newFleet(t, testworker.Config{Config: worker.Config{Platform: mustPlatform(t, "linux/amd64")}})
	idx := f.reg.PushMultiPlatform(t, "multi", "v1", testenv.OCIIndex)
	list := f.reg.PushMultiPlatform(t, "list", "v1", testenv.DockerList)
	amd, arm := idx.Images[0], idx.Images[1]

	cases := []struct {
		platform string
		want     []byte
	}{
		{"", testenv.ConfigReply(amd)},
		{"linux/amd64", testenv.ConfigReply(amd)},
		{"linux/arm64", testenv.ConfigReply(arm)},
		{"linux/arm64/v8", testenv.ConfigReply(arm)},
	}
	for _, tc := range cases {
		r := call(t, f.cli, contract.OCIManifestConfig, f.reg.Ref("multi", "v1"), client.WithPlatform(tc.platform))
		if !bytes.Equal(r.Body, tc.want) {
			t.Errorf("platform %q: got %s", tc.platform, r.Body)
		}
	}
	if r := call(t, f.cli, contract.OCIManifestConfig, f.reg.Ref("list", "v1"), client.WithPlatform("linux/arm64")); !bytes.Equal(r.Body, testenv.ConfigReply(list.Images[1])) {
		t.Errorf("docker list arm64: got %s", r.Body)
	}

	// The platform is part of the key: amd64 was cached, arm64 too, and
	// neither answers for the other.
	if r := call(t, f.cli, contract.OCIManifestConfig, f.reg.Ref("multi", "v1"), client.WithPlatform("linux/arm64")); r.Cache != contract.Hit || !bytes.Equal(r.Body, testenv.ConfigReply(arm)) {
		t.Errorf("arm64 second call: cache %s", r.Cache)
	}

	_, err := f.cli.Image(context.Background(), contract.OCIManifestConfig, f.reg.Ref("multi", "v1"), client.WithPlatform("linux/s390x"))
	wantCode(t, err, 404, "index has no manifest for linux/s390x; it has linux/amd64, linux/arm64/v8, unknown/unknown, unknown/unknown")

	_, err = f.cli.Image(context.Background(), contract.OCIManifestConfig, f.reg.Ref("multi", "v1"), client.WithPlatform("linux/arm64/v7"))
	wantCode(t, err, 404, "linux/arm64/v7")

	_, err = f.cli.Image(context.Background(), contract.OCIManifestConfig, f.reg.Ref("multi", "v1"), client.WithPlatform("linux"))
	wantCode(t, err, 400, f.reg.Ref("multi", "v1")+": invalid platform")

	// The other functions ignore the header: the index itself.
	if r := call(t, f.cli, contract.ManifestDigest, f.reg.Ref("multi", "v1"), client.WithPlatform("linux/arm64")); !bytes.Equal(r.Body, digestBody(idx.Digest)) {
		t.Errorf("digest with platform header: %s", r.Body)
	}
}

func TestDigestIsOneHeadAndTransportIsReused(t *testing.T) {
	f := newFleet(t, testworker.Config{})
	a := f.reg.PushImage(t, "repo", "a", testenv.OCIManifest, "linux/amd64")
	b := f.reg.PushImage(t, "repo", "b", testenv.OCIManifest, "linux/amd64")
	f.reg.ResetCounts()

	if got := call(t, f.cli, contract.ManifestDigest, f.reg.Ref("repo", "a")).Body; !bytes.Equal(got, digestBody(a.Digest)) {
		t.Fatalf("digest a: %s", got)
	}
	want := map[string]int{"GET ping": 1, "HEAD manifest": 1}
	if got := f.reg.Counts(); !equalCounts(got, want) {
		t.Fatalf("cold digest: registry saw %v, want %v", got, want)
	}

	if got := call(t, f.cli, contract.ManifestDigest, f.reg.Ref("repo", "b")).Body; !bytes.Equal(got, digestBody(b.Digest)) {
		t.Fatalf("digest b: %s", got)
	}
	want = map[string]int{"GET ping": 1, "HEAD manifest": 2}
	if got := f.reg.Counts(); !equalCounts(got, want) {
		t.Fatalf("second tag of the same repository: registry saw %v, want %v (one more HEAD, no ping, no GET)", got, want)
	}
}

func TestDigestFallsBackToGetWhenHeadFails(t *testing.T) {
	f := newFleet(t, testworker.Config{})
	img := f.reg.PushImage(t, "nohead", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.Override(func(r *http.Request) bool {
		return r.Method == http.MethodHead && testenv.Kind(r.URL.Path) == "manifest"
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusMethodNotAllowed)
	}))
	if got := call(t, f.cli, contract.ManifestDigest, f.reg.Ref("nohead", "v1")).Body; !bytes.Equal(got, digestBody(img.Digest)) {
		t.Fatalf("digest by GET: %s", got)
	}
	if h, g := f.reg.Count("HEAD", "manifest"), f.reg.Count("GET", "manifest"); h != 1 || g != 1 {
		t.Fatalf("want one HEAD then one GET, got %d HEAD, %d GET", h, g)
	}
}

func equalCounts(got, want map[string]int) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

func TestHitsAliasesAndExpiry(t *testing.T) {
	const ttl = time.Second
	f := newFleet(t, testworker.Config{Config: worker.Config{CacheTTL: ttl}})
	img := f.reg.PushImage(t, "cached", "latest", testenv.OCIManifest, "linux/amd64")

	for _, fn := range []contract.Function{contract.ManifestDigest, contract.OCIManifest, contract.OCIManifestConfig} {
		first := call(t, f.cli, fn, f.reg.Host+"/cached")
		before := f.reg.Counts()
		// Aliases of one reference share one key.
		for _, alias := range []string{f.reg.Host + "/cached", f.reg.Host + "/cached:latest"} {
			r := call(t, f.cli, fn, alias)
			if r.Cache != contract.Hit || !bytes.Equal(r.Body, first.Body) {
				t.Errorf("%s %s: cache %q", fn, alias, r.Cache)
			}
		}
		if after := f.reg.Counts(); !equalCounts(after, before) {
			t.Errorf("%s: hits reached the registry: %v then %v", fn, before, after)
		}
	}

	// Past the TTL the answer is fetched again.
	heads := f.reg.Count("HEAD", "manifest")
	time.Sleep(ttl + 200*time.Millisecond)
	r := call(t, f.cli, contract.ManifestDigest, f.reg.Ref("cached", "latest"))
	if r.Cache != contract.Miss || !bytes.Equal(r.Body, digestBody(img.Digest)) {
		t.Errorf("after the TTL: cache %q", r.Cache)
	}
	if got := f.reg.Count("HEAD", "manifest"); got != heads+1 {
		t.Errorf("after the TTL: %d HEADs, want %d", got, heads+1)
	}
}

// TestRedisTTLCountsFromTheFetch: the Redis value holds the reply body, its
// TTL is --cache-ttl from the fetch, and hits (served from Redis: the
// memory tier is off) never extend it.
func TestRedisTTLCountsFromTheFetch(t *testing.T) {
	rd := testenv.StartRedis(t)
	f := newFleet(t, testworker.Config{RedisAddr: rd.Addr(), NoMemory: true, Config: worker.Config{CacheTTL: 45 * time.Second}})
	img := f.reg.PushImage(t, "ttl", "v1", testenv.OCIManifest, "linux/amd64")
	call(t, f.cli, contract.ManifestDigest, f.reg.Ref("ttl", "v1"))

	rdb := rd.Client(t)
	key := "regcap:v2:manifest_digest:" + f.reg.Ref("ttl", "v1")
	ttl1, err := rdb.PTTL(context.Background(), key).Result()
	testenv.Must(t, err, "PTTL")
	if ttl1 <= 0 || ttl1 > 45*time.Second {
		t.Fatalf("redis TTL %v, want (0, 45s]", ttl1)
	}
	raw, err := rdb.Get(context.Background(), key).Bytes()
	testenv.Must(t, err, "GET")
	val, _, err := rediscache.DecodeValue(key, raw, nil)
	testenv.Must(t, err, "decoding the redis value")
	if !bytes.Equal(val, digestBody(img.Digest)) {
		t.Fatalf("redis value holds %s, want the reply body %s", val, digestBody(img.Digest))
	}
	// Hits come from Redis and do not extend the entry: a worker that
	// re-set the value on a hit would push the TTL back up to 45s.
	time.Sleep(1100 * time.Millisecond)
	heads := f.reg.Count("HEAD", "manifest")
	for i := 0; i < 3; i++ {
		if r := call(t, f.cli, contract.ManifestDigest, f.reg.Ref("ttl", "v1")); r.Cache != contract.Hit || !bytes.Equal(r.Body, val) {
			t.Fatalf("want a hit with the stored body, got %s %s", r.Cache, r.Body)
		}
	}
	if got := f.reg.Count("HEAD", "manifest"); got != heads {
		t.Fatalf("hits reached the registry: %d HEADs, then %d", heads, got)
	}
	ttl2, err := rdb.PTTL(context.Background(), key).Result()
	testenv.Must(t, err, "PTTL")
	if ttl2 > ttl1-time.Second {
		t.Fatalf("a hit extended the TTL: %v, then %v more than a second later", ttl1, ttl2)
	}
}

func TestConcurrentIdenticalRequestsShareOneFetch(t *testing.T) {
	f := newFleet(t, testworker.Config{})
	img := f.reg.PushImage(t, "burst", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.ResetCounts()
	gate := f.reg.Hold("/burst/manifests/")

	const n = 100
	type res struct {
		r   *client.Reply
		err error
	}
	out := make(chan res, n)
	for i := 0; i < n; i++ {
		go func() {
			r, err := f.cli.Image(context.Background(), contract.ManifestDigest, f.reg.Ref("burst", "v1"))
			out <- res{r, err}
		}()
	}
	<-gate.Arrived()
	testenv.Eventually(t, "100 requests pending", func() bool { return f.worker.Pending() == n })
	gate.Release()

	outcomes := map[contract.Outcome]int{}
	for i := 0; i < n; i++ {
		r := <-out
		if r.err != nil {
			t.Fatalf("request failed: %v", r.err)
		}
		if !bytes.Equal(r.r.Body, digestBody(img.Digest)) {
			t.Fatalf("body %s", r.r.Body)
		}
		outcomes[r.r.Cache]++
	}
	if h, g := f.reg.Count("HEAD", "manifest"), f.reg.Count("GET", "manifest"); h != 1 || g != 0 {
		t.Fatalf("%d requests made %d HEAD and %d GET upstream, want 1 and 0", n, h, g)
	}
	// Pending() counts a request before it joins the singleflight, so one
	// that joins after the fetch finished finds the answer cached: a hit.
	if outcomes[contract.Miss] != 1 || outcomes[contract.Shared]+outcomes[contract.Hit] != n-1 || outcomes[contract.Shared] == 0 {
		t.Fatalf("outcomes %v, want 1 miss and %d shared or hit", outcomes, n-1)
	}
}

// TestCallerGivingUpDoesNotFailOthers: the shared fetch runs on its own
// context, so the first caller's timeout does not cancel it.
func TestCallerGivingUpDoesNotFailOthers(t *testing.T) {
	f := newFleet(t, testworker.Config{})
	img := f.reg.PushImage(t, "patient", "v1", testenv.OCIManifest, "linux/amd64")
	gate := f.reg.Hold("/patient/manifests/")

	ctx, cancel := context.WithCancel(context.Background())
	impatient := make(chan error, 1)
	go func() {
		_, err := f.cli.Image(ctx, contract.ManifestDigest, f.reg.Ref("patient", "v1"))
		impatient <- err
	}()
	<-gate.Arrived()
	patient := make(chan *client.Reply, 1)
	go func() { patient <- call(t, f.cli, contract.ManifestDigest, f.reg.Ref("patient", "v1")) }()
	testenv.Eventually(t, "both requests pending", func() bool { return f.worker.Pending() == 2 })
	cancel()
	if err := <-impatient; err == nil {
		t.Fatal("the cancelled caller got an answer")
	}
	gate.Release()
	if r := <-patient; !bytes.Equal(r.Body, digestBody(img.Digest)) {
		t.Fatalf("patient caller: %s", r.Body)
	}
}

// TestHangingRegistryDoesNotBlockOthers: while image A's fetch hangs, a
// cached image and an uncached image are both answered, whether the
// cached one is a memory hit (answered in the callback) or a Redis hit
// (memory tier off: answered from a goroutine). Ordering, not timing, is
// asserted: A is still unanswered when the others are.
func TestHangingRegistryDoesNotBlockOthers(t *testing.T) {
	for _, tier := range []struct {
		name     string
		noMemory bool
	}{{"memory hit", false}, {"redis hit", true}} {
		t.Run(tier.name, func(t *testing.T) {
			rd := testenv.StartRedis(t)
			f := newFleet(t, testworker.Config{RedisAddr: rd.Addr(), NoMemory: tier.noMemory})
			f.reg.PushImage(t, "slow", "v1", testenv.OCIManifest, "linux/amd64")
			b := f.reg.PushImage(t, "cached", "v1", testenv.OCIManifest, "linux/amd64")
			c := f.reg.PushImage(t, "cold", "v1", testenv.OCIManifest, "linux/amd64")
			call(t, f.cli, contract.OCIManifest, f.reg.Ref("cached", "v1"))

			gate := f.reg.Hold("/slow/")
			aDone := make(chan error, 1)
			go func() {
				_, err := f.cli.Image(context.Background(), contract.OCIManifest, f.reg.Ref("slow", "v1"))
				aDone <- err
			}()
			<-gate.Arrived()

			if r := call(t, f.cli, contract.OCIManifest, f.reg.Ref("cached", "v1")); !bytes.Equal(r.Body, b.Manifest) || r.Cache != contract.Hit {
				t.Fatalf("cached image while A hangs: cache %q", r.Cache)
			}
			if r := call(t, f.cli, contract.OCIManifest, f.reg.Ref("cold", "v1")); !bytes.Equal(r.Body, c.Manifest) || r.Cache != contract.Miss {
				t.Fatalf("cold image while A hangs: cache %q, body %s", r.Cache, r.Body)
			}
			select {
			case err := <-aDone:
				t.Fatalf("A was answered before its registry was released: %v", err)
			default:
			}
			gate.Release()
			if err := <-aDone; err != nil {
				t.Fatalf("A after release: %v", err)
			}
		})
	}
}

func TestRedisOutage(t *testing.T) {
	rd := testenv.StartRedis(t)
	core, logs := observer.New(zap.InfoLevel)
	f := newFleet(t, testworker.Config{RedisAddr: rd.Addr(), Logger: zap.New(core)})
	var imgs []testenv.Image
	for i := 0; i < 6; i++ {
		imgs = append(imgs, f.reg.PushImage(t, "outage", fmt.Sprintf("v%d", i), testenv.OCIManifest, "linux/amd64"))
	}
	ref := func(i int) string { return f.reg.Ref("outage", fmt.Sprintf("v%d", i)) }
	call(t, f.cli, contract.OCIManifest, ref(0))

	rd.Stop()
	// Cached and new images alike are answered; new ones from the registry.
	for i := 0; i < 4; i++ {
		for j := 0; j < 2; j++ {
			r := call(t, f.cli, contract.OCIManifest, ref(i))
			if !bytes.Equal(r.Body, imgs[i].Manifest) {
				t.Fatalf("during the outage, image %d: %s", i, r.Body)
			}
		}
	}
	if m := scrape(t, f.worker); !strings.Contains(m, "\nregcap_redis_available 0\n") {
		t.Errorf("during the outage the gauge does not say so:\n%s", grep(m, "regcap_redis_available"))
	}

	rd.Start()
	// The worker shares again: during an outage it probes Redis once a
	// second, so within a few requests a new answer reaches Redis again.
	rdb := rd.Client(t)
	next := 5
	testenv.Eventually(t, "a new answer to reach redis", func() bool {
		tag := fmt.Sprintf("after%d", next)
		img := f.reg.PushImage(t, "outage", tag, testenv.OCIManifest, "linux/amd64")
		call(t, f.cli, contract.OCIManifest, f.reg.Ref("outage", tag))
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
	if m := scrape(t, f.worker); !strings.Contains(m, "\nregcap_redis_available 1\n") {
		t.Fatalf("after the outage the gauge still says Redis is unavailable:\n%s", grep(m, "regcap_redis_available"))
	}
	// One outage, one warning and one recovery line: not one per request.
	if n := logs.FilterMessageSnippet("redis unavailable").Len(); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("redis available again").Len(); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	other := testworker.Start(t, testworker.Config{NATSURL: f.natsURL, RedisAddr: rd.Addr(), Config: worker.Config{QueueGroup: "other"}, NoMemory: true})
	f.worker.Shutdown(context.Background())
	_ = other
	if r := call(t, f.cli, contract.OCIManifest, ref5); r.Cache != contract.Hit || !bytes.Equal(r.Body, imgs[5].Manifest) {
		t.Fatalf("after redis came back: cache %q", r.Cache)
	}
}

// TestBlackholedRedis: a Redis that accepts connections and never answers
// costs the first request its command timeout; after that the worker only
// probes it once a second, so requests are served from the registry
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
	f := newFleet(t, testworker.Config{RedisAddr: silent.Addr().String(), Logger: zap.NewNop()})
	const n = 20
	for i := 0; i < n; i++ {
		img := f.reg.PushImage(t, "blackhole", fmt.Sprint(i), testenv.OCIManifest, "linux/amd64")
		if r := call(t, f.cli, contract.OCIManifest, f.reg.Ref("blackhole", fmt.Sprint(i))); !bytes.Equal(r.Body, img.Manifest) {
			t.Fatalf("request %d: %s", i, r.Body)
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

func TestBadInput(t *testing.T) {
	f := newFleet(t, testworker.Config{Config: worker.Config{FetchTimeout: 2 * time.Second}})
	good := f.reg.PushImage(t, "good", "v1", testenv.OCIManifest, "linux/amd64")
	nc := testenv.Connect(t, f.natsURL)

	// A listener that accepts and never answers, and a port with nobody.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	testenv.Must(t, err, "listen")
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	closedPort := testenv.FreePort(t)

	// Registry misbehaviour, served by overrides on named repositories.
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/huge/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", testenv.OCIManifest)
			// No Content-Length: the limit must hold while reading.
			w.(http.Flusher).Flush()
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			for i := 0; i < (5<<20)/len(chunk); i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/schema1/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
			// As distribution does: the digest of the unsigned payload.
			w.Header().Set("Docker-Content-Digest", testenv.Digest([]byte("payload without signatures")))
			_, _ = w.Write([]byte(`{"schemaVersion":1,"name":"schema1","tag":"v1","fsLayers":[]}`))
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/limited/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`))
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/broken/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
		}))
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/garbage/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", testenv.OCIManifest)
			_, _ = w.Write([]byte(`<html>not a manifest</html>`))
		}))
	bigConfig := f.reg.PushImage(t, "bigconfig", "v1", testenv.OCIManifest, "linux/amd64")
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/bigconfig/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", testenv.OCIManifest)
			_, _ = w.Write(bytes.Replace(bigConfig.Manifest, []byte(`"size": `), []byte(`"size": 9999999`), 1))
		}))

	hang := f.reg.Hold("/hang/")
	defer hang.Release()

	cases := []struct {
		name    string
		fn      contract.Function
		payload []byte
		code    int
		part    string
	}{
		{"not JSON", contract.ManifestDigest, []byte(`busybox`), 400, "not a JSON string"},
		{"not a string", contract.OCIManifest, []byte(`{"image":"busybox"}`), 400, "not a JSON string"},
		{"number", contract.OCIManifestConfig, []byte(`7`), 400, "not a JSON string"},
		{"zero bytes", contract.ManifestDigest, nil, 400, "empty payload"},
		{"empty string", contract.ManifestDigest, []byte(`""`), 400, "empty image reference"},
		{"over 4 KiB", contract.ManifestDigest, []byte(`"` + strings.Repeat("a", 5000) + `"`), 400, "over the 4096-byte limit"},
		{"invalid reference", contract.ManifestDigest, []byte(`"Not/Valid:ref:"`), 400, "invalid image reference"},
		{"sha512 digest", contract.OCIManifest, q(f.reg.Host + "/good@sha512:" + strings.Repeat("ab", 64)), 400, "only sha256"},
		{"unknown tag", contract.ManifestDigest, q(f.reg.Ref("good", "nope")), 404, f.reg.Ref("good", "nope")},
		{"unknown repository", contract.OCIManifest, q(f.reg.Ref("nothing", "v1")), 404, "404"},
		{"nothing listens", contract.ManifestDigest, q(fmt.Sprintf("127.0.0.1:%d/x:y", closedPort)), 502, "unreachable"},
		{"never answers", contract.OCIManifest, q(silent.Addr().String() + "/x:y"), 504, "did not answer in time"},
		{"registry hangs", contract.OCIManifest, q(f.reg.Ref("hang", "v1")), 504, "did not answer in time"},
		{"oversized manifest", contract.OCIManifest, q(f.reg.Ref("huge", "v1")), 413, "limit"},
		{"oversized config", contract.OCIManifestConfig, q(f.reg.Ref("bigconfig", "v1")), 413, "over the 8388608-byte limit"},
		{"schema 1", contract.OCIManifest, q(f.reg.Ref("schema1", "v1")), 415, "schema 1"},
		{"rate limited", contract.OCIManifest, q(f.reg.Ref("limited", "v1")), 429, "Retry-After: 30"},
		{"rate limited digest", contract.ManifestDigest, q(f.reg.Ref("limited", "v1")), 429, "retry after 30s"},
		{"registry error", contract.OCIManifest, q(f.reg.Ref("broken", "v1")), 502, "500"},
		{"not JSON upstream", contract.OCIManifest, q(f.reg.Ref("garbage", "v1")), 502, "not valid JSON"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := nats.NewMsg(tc.fn.Subject("kubewarden"))
			m.Data = tc.payload
			resp, err := nc.RequestMsg(m, 30*time.Second)
			testenv.Must(t, err, "request")
			if got := resp.Header.Get("Nats-Service-Error-Code"); got != fmt.Sprint(tc.code) {
				t.Fatalf("code %q, want %d (%s)", got, tc.code, resp.Header.Get("Nats-Service-Error"))
			}
			msg := resp.Header.Get("Nats-Service-Error")
			if !strings.Contains(msg, tc.part) || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("message %q, want one line containing %q", msg, tc.part)
			}
			if len(resp.Data) != 0 {
				t.Fatalf("error reply has a body: %q", resp.Data)
			}
			if tc.code == 429 && resp.Header.Get("Retry-After") != "30" {
				t.Fatalf("Retry-After header %q", resp.Header.Get("Retry-After"))
			}
			// The worker keeps serving: a hit, and a miss that needs a
			// fetch slot (a leaked slot or pending count would show here),
			// and nothing is left pending.
			if r := call(t, f.cli, contract.OCIManifest, f.reg.Ref("good", "v1")); !bytes.Equal(r.Body, good.Manifest) {
				t.Fatalf("worker stopped serving after %s", tc.name)
			}
			fresh := f.reg.PushImage(t, "good", fmt.Sprintf("after%d", i), testenv.OCIManifest, "linux/amd64")
			if r := call(t, f.cli, contract.OCIManifest, f.reg.Ref("good", fmt.Sprintf("after%d", i))); !bytes.Equal(r.Body, fresh.Manifest) || r.Cache != contract.Miss {
				t.Fatalf("after %s, a new image: cache %q", tc.name, r.Cache)
			}
			testenv.Eventually(t, "no request left pending", func() bool { return f.worker.Pending() == 0 })
		})
	}

	// Errors are not cached: a registry that recovers is asked again.
	gets := f.reg.Count("GET", "manifest")
	_, err = f.cli.Image(context.Background(), contract.OCIManifest, f.reg.Ref("broken", "v1"))
	wantCode(t, err, 502, "500")
	if f.reg.Count("GET", "manifest") != gets+1 {
		t.Fatal("an error was answered from the cache")
	}
}

func q(s string) []byte { return []byte(`"` + s + `"`) }

func TestBackpressure(t *testing.T) {
	f := newFleet(t, testworker.Config{Config: worker.Config{MaxPending: 3, Concurrency: 1}})
	good := f.reg.PushImage(t, "ok", "v1", testenv.OCIManifest, "linux/amd64")
	call(t, f.cli, contract.OCIManifest, f.reg.Ref("ok", "v1"))
	gate := f.reg.Hold("/held/")
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = f.cli.Image(context.Background(), contract.OCIManifest, f.reg.Ref("held", fmt.Sprint(i)))
		}()
	}
	testenv.Eventually(t, "3 requests pending", func() bool { return f.worker.Pending() == 3 })
	_, err := f.cli.Image(context.Background(), contract.OCIManifest, f.reg.Ref("held", "x"))
	wantCode(t, err, 503, "queue limit")
	// Hits are still answered at once.
	if r := call(t, f.cli, contract.OCIManifest, f.reg.Ref("ok", "v1")); !bytes.Equal(r.Body, good.Manifest) || r.Cache != contract.Hit {
		t.Fatalf("hit under backpressure: %q", r.Cache)
	}
	gate.Release()
	wg.Wait()
}

// TestPublishWithoutReplyIsIgnored: a request without a reply subject
// must not crash or block the worker.
func TestPublishWithoutReplyIsIgnored(t *testing.T) {
	f := newFleet(t, testworker.Config{})
	img := f.reg.PushImage(t, "x", "v1", testenv.OCIManifest, "linux/amd64")
	nc := testenv.Connect(t, f.natsURL)
	testenv.Must(t, nc.Publish(contract.OCIManifest.Subject("kubewarden"), q(f.reg.Ref("x", "v1"))), "publish")
	testenv.Must(t, nc.Flush(), "flush")
	if r := call(t, f.cli, contract.OCIManifest, f.reg.Ref("x", "v1")); !bytes.Equal(r.Body, img.Manifest) {
		t.Fatal("worker broken after a publish")
	}
}

var _ = registry.DefaultManifestLimit
