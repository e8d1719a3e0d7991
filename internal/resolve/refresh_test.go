package resolve

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
)

// TestRefreshAheadHotKey: a key asked for continuously across three TTLs,
// over three workers sharing Redis, sees exactly one miss; every other
// answer is a hit, and the registry is asked about once per TTL (once
// per 0.8 TTL: the refresh starts in the last 20 %), not more.
func TestRefreshAheadHotKey(t *testing.T) {
	const ttl = 2 * time.Second
	var refreshes atomic.Int64
	f := startFleet(t, 3, 0, WithTTL(ttl, 0), WithRefreshAhead(0.2), WithRefreshHook(func() { refreshes.Add(1) }))
	f.reg.PushImage(t, "hot/app", "v1", testenv.OCIManifest, "linux/amd64")
	req := request(contract.ManifestDigest, f.reg.Ref("hot/app", "v1"))
	outcomes := map[contract.Outcome]int{}
	start := time.Now()
	for i := 0; time.Since(start) < 3*ttl+ttl/4; i++ {
		a, err := f.res[i%3].Answer(context.Background(), req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		outcomes[a.Outcome]++
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	heads := f.reg.Count("HEAD", "manifest")
	t.Logf("%s over 3 workers: outcomes %v, %d registry HEADs, %d refreshes", elapsed.Round(time.Millisecond), outcomes, heads, refreshes.Load())
	if outcomes[contract.Miss] != 1 || outcomes[contract.Hit] != total(outcomes)-1 {
		t.Errorf("outcomes %v, want exactly one miss and hits for the rest", outcomes)
	}
	if most := int(elapsed/(ttl*8/10)) + 1; heads > most || heads < 3 {
		t.Errorf("%d registry HEADs in %s, want 3 to %d (about one per TTL)", heads, elapsed, most)
	}
}

// TestColdKeysExpire: a key nobody asks for is not refreshed: after its
// TTL, no background request reached the registry.
func TestColdKeysExpire(t *testing.T) {
	const ttl = 300 * time.Millisecond
	f := startFleet(t, 1, 0, WithTTL(ttl, 0), WithRefreshAhead(0.5))
	f.reg.PushImage(t, "cold/app", "v1", testenv.OCIManifest, "linux/amd64")
	if _, err := f.res[0].Answer(context.Background(), request(contract.ManifestDigest, f.reg.Ref("cold/app", "v1"))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * ttl)
	if n := f.reg.Count("HEAD", "manifest"); n != 1 {
		t.Errorf("%d HEADs for a key asked once, want 1", n)
	}
}

// TestTTLJitter: TTLs spread by ±10 %, so that keys fetched together do
// not expire together.
func TestTTLJitter(t *testing.T) {
	r := newResolver(t, WithTTLJitter(0.1))
	var got []time.Duration
	for range 200 {
		d := r.jittered(time.Minute)
		if d < 54*time.Second || d > 66*time.Second {
			t.Fatalf("jittered TTL %s outside 54s–66s", d)
		}
		got = append(got, d)
	}
	slices.Sort(got)
	if spread := got[len(got)-1] - got[0]; spread < 6*time.Second {
		t.Errorf("200 TTLs spread over %s only", spread)
	}
}

func total(m map[contract.Outcome]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// BenchmarkRefreshAhead measures the answers to a hot key, asked for
// every half millisecond (about 200 times per TTL), over a window that
// spans many expiries (TTL 100 ms), with refresh-ahead on and off, next
// to the same key with no expiry in the window (TTL 1 h); it reports the
// p99 and the maximum of each. With refresh-ahead the expiring key's p99
// should be close to the one that never expires:
//
//	go test -run '^$' -bench RefreshAhead -benchtime 3s ./internal/resolve/
func BenchmarkRefreshAhead(b *testing.B) {
	f := &fleet{reg: testenv.StartRegistry(b), redis: testenv.StartRedis(b)}
	f.reg.PushImage(b, "hot/app", "v1", testenv.OCIManifest, "linux/amd64")
	req := request(contract.ManifestDigest, f.reg.Ref("hot/app", "v1"))
	for _, c := range []struct {
		name string
		opts []Option
	}{
		{"expiring/refresh-ahead", []Option{WithTTL(100*time.Millisecond, 0), WithRefreshAhead(0.2)}},
		{"expiring/no-refresh", []Option{WithTTL(100*time.Millisecond, 0)}},
		{"no-expiry", []Option{WithTTL(time.Hour, 0)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := f.add(b, 0, c.opts...)
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := r.Answer(context.Background(), req); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				time.Sleep(500 * time.Microsecond)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
		})
	}
}

// TestFailedRefreshShowsA404: a refresh ahead of expiry that gets a 404
// (the tag was deleted) does not make the fleet answer the old entry
// stale once it expires: the 404 shows.
func TestFailedRefreshShowsA404(t *testing.T) {
	const ttl = time.Second
	f := startFleet(t, 1, 0, WithTTL(ttl, 0), WithRefreshAhead(0.5), WithStaleIfError(time.Hour))
	f.reg.PushImage(t, "deleted/app", "v1", testenv.OCIManifest, "linux/amd64")
	req := request(contract.ManifestDigest, f.reg.Ref("deleted/app", "v1"))
	if _, err := f.res[0].Answer(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	f.reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/deleted/app/manifests/") },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotFound) }))
	time.Sleep(ttl * 6 / 10) // in the refresh window: this hit starts a refresh, which gets the 404
	if a, err := f.res[0].Answer(context.Background(), req); err != nil || a.Outcome != contract.Hit {
		t.Fatalf("hit in the refresh window: %v %v", a.Outcome, err)
	}
	time.Sleep(ttl / 2)
	_, err := f.res[0].Answer(context.Background(), req)
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 404 {
		t.Fatalf("after expiry, with the tag deleted: %v, want 404, not a stale answer", err)
	}
}

// TestCloseReleasesTheLock: a resolver closed while it holds the fleet
// lock for a fetch gives the lock up before Close returns, so that the
// other workers fetch at once instead of waiting out the lock.
func TestCloseReleasesTheLock(t *testing.T) {
	f := startFleet(t, 1, 0)
	f.reg.PushImage(t, "closing/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("closing/app", "v1")
	gate := f.reg.Hold("/closing/app/manifests/")
	defer gate.Release()
	go func() { _, _ = f.res[0].Answer(context.Background(), request(contract.ManifestDigest, ref)) }()
	<-gate.Arrived()
	k := key(t, contract.ManifestDigest, ref)
	rdb := f.redis.Client(t)
	if rdb.Exists(context.Background(), rediscache.LockKey(k)).Val() != 1 {
		t.Fatal("the fetch holds no lock: the test tests nothing")
	}
	f.res[0].Close()
	if rdb.Exists(context.Background(), rediscache.LockKey(k)).Val() != 0 {
		t.Fatal("the lock is still held after Close returned")
	}
}
