package resolve

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/testenv"
)

// TestRedisTTLCountsFromTheFetch: the Redis value holds the reply body, its
// TTL is --cache-ttl from the fetch, and hits (served from Redis: the
// memory tier is off) never extend it.
func TestRedisTTLCountsFromTheFetch(t *testing.T) {
	f := startFleet(t, 1, 0, WithMemory(0), WithTTL(45*time.Second, 0))
	r := f.res[0]
	img := f.reg.PushImage(t, "ttl", "v1", testenv.OCIManifest, "linux/amd64")
	mustAnswer(t, r, request(contract.ManifestDigest, f.reg.Ref("ttl", "v1")))
	settled(t, r) // the store in Redis, after the reply

	rdb := f.redis.Client(t)
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
	if !bytes.Equal(val, digestJSON(img.Digest)) {
		t.Fatalf("redis value holds %s, want the reply body %s", val, digestJSON(img.Digest))
	}
	// Hits come from Redis and do not extend the entry: a resolver that
	// re-set the value on a hit would push the TTL back up to 45s.
	time.Sleep(1100 * time.Millisecond)
	heads := f.reg.Count("HEAD", "manifest")
	for range 3 {
		if a := mustAnswer(t, r, request(contract.ManifestDigest, f.reg.Ref("ttl", "v1"))); a.Outcome != contract.Hit || !bytes.Equal(a.Body, val) {
			t.Fatalf("want a hit with the stored body, got %s %s", a.Outcome, a.Body)
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
