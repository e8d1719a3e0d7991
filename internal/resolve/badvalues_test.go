package resolve

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestBadRedisValues: whatever sits under a key, from a corrupted value
// to another type or a planted answer, is a miss: the request is served
// from the registry, the value is overwritten by the fetch, the refusal
// is logged once per key and counted, and Redis stays available.
func TestBadRedisValues(t *testing.T) {
	secret := []byte("fleet secret")
	f := &fleet{reg: testenv.StartRegistry(t), redis: testenv.StartRedis(t)}
	core, logs := observer.New(zap.WarnLevel)
	var mu sync.Mutex
	reasons := map[string]int{}
	r := f.addWith(t, 0, []rediscache.Option{rediscache.WithCacheKey(secret), rediscache.WithMaxBody(64 << 10), rediscache.WithLogger(zap.New(core)),
		rediscache.WithRejectHook(func(reason string) { mu.Lock(); reasons[reason]++; mu.Unlock() })}, WithMemory(0))
	rdb := f.redis.Client(t)
	ctx := context.Background()
	img := f.reg.PushImage(t, "bad/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("bad/app", "v1")
	want := []byte(`{"digest":"` + img.Digest + `"}`)
	k := key(t, contract.ManifestDigest, ref)
	planted := []byte(`{"digest":"sha256:` + strings.Repeat("e", 64) + `"}`)

	for _, c := range []struct {
		name   string
		plant  func() error
		reason string
	}{
		{"garbage", func() error { return rdb.Set(ctx, k, "garbage", time.Minute).Err() }, "short"},
		{"empty", func() error { return rdb.Set(ctx, k, "", time.Minute).Err() }, "short"},
		{"a bare body, as the v1 format", func() error { return rdb.Set(ctx, k, planted, time.Minute).Err() }, "version"},
		{"planted without the key", func() error {
			return rdb.Set(ctx, k, rediscache.EncodeValue(k, planted, time.Now(), time.Minute, nil), time.Minute).Err()
		}, "unsigned"},
		{"planted with another key", func() error {
			return rdb.Set(ctx, k, rediscache.EncodeValue(k, planted, time.Now(), time.Minute, []byte("guess")), time.Minute).Err()
		}, "signature"},
		{"oversized", func() error { return rdb.Set(ctx, k, strings.Repeat("x", 1<<20), time.Minute).Err() }, "too_large"},
		{"no expiry", func() error {
			return rdb.Set(ctx, k, rediscache.EncodeValue(k, planted, time.Now(), time.Minute, secret), 0).Err()
		}, "no_ttl"},
		{"a list", func() error { return rdb.RPush(ctx, k, "a", "b").Err() }, "wrong_type"},
		{"a hash", func() error { return rdb.HSet(ctx, k, "f", "v").Err() }, "wrong_type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			testenv.Must(t, rdb.Del(ctx, k).Err(), "del")
			testenv.Must(t, c.plant(), "planting")
			f.reg.ResetCounts()
			for i := range 2 {
				a, err := r.Answer(ctx, request(contract.ManifestDigest, ref))
				want := contract.Miss
				if i == 1 {
					want = contract.Hit // the fetch overwrote the bad value
				}
				if err != nil || !bytes.Equal(a.Body, []byte(`{"digest":"`+img.Digest+`"}`)) || a.Outcome != want {
					t.Fatalf("answer %d: %s %s %v, want the registry's digest (%s)", i, a.Body, a.Outcome, err, want)
				}
			}
			settled(t, r) // the fetch's store in Redis, after the reply
			if n := f.reg.Count("HEAD", "manifest"); n != 1 {
				t.Errorf("%d HEADs, want 1", n)
			}
			mu.Lock()
			got := reasons[c.reason]
			mu.Unlock()
			if got == 0 {
				t.Errorf("no %s refusal counted: %v", c.reason, reasons)
			}
			if !r.RedisAvailable() {
				t.Fatal("a bad value put the worker in redis-outage mode")
			}
			raw, err := rdb.Get(ctx, k).Bytes()
			testenv.Must(t, err, "reading the value back")
			if body, _, err := rediscache.DecodeValue(k, raw, secret); err != nil || !bytes.Equal(body, want) {
				t.Fatalf("the value was not overwritten by the fetch: %v", err)
			}
		})
	}
	// Logged once per key, with the reason, however often it was refused.
	lines := logs.FilterMessageSnippet("refused a value").All()
	if len(lines) != 1 || lines[0].ContextMap()["reason"] != "short" || lines[0].ContextMap()["key"] != k {
		t.Errorf("refusals logged %d times (%v), want once for the key, with its first reason", len(lines), lines)
	}
}
