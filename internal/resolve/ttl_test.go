package resolve

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestTTLCountsFromTheFetch: worker A fetches a key; worker B, with its
// memory tier on and the same Redis, reads it later. B keeps it in memory
// only until A's fetch time + TTL, not B's read time + TTL, so no replica
// serves an answer older than the TTL.
func TestTTLCountsFromTheFetch(t *testing.T) {
	const ttl = 2 * time.Second
	f := startFleet(t, 2, 0, WithTTL(ttl, 0))
	a, b := f.res[0], f.res[1]
	img := f.reg.PushImage(t, "ttl/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := f.reg.Ref("ttl/app", "v1")
	req := request(contract.OCIManifest, ref)

	if ans, err := a.Answer(context.Background(), req); err != nil || ans.Outcome != contract.Miss {
		t.Fatalf("A: %v %v, want a miss", ans.Outcome, err)
	}
	settled(t, a)           // the store in Redis, after the reply
	fetchedBy := time.Now() // A's fetch started before this
	time.Sleep(ttl / 2)
	ans, err := b.Answer(context.Background(), req)
	if err != nil || ans.Outcome != contract.Hit || !bytes.Equal(ans.Body, img.Manifest) {
		t.Fatalf("B: %v %v, want a hit from Redis", ans.Outcome, err)
	}
	e, ok := b.mem.Get(key(t, contract.OCIManifest, ref))
	if !ok {
		t.Fatal("B did not keep the answer in memory")
	}
	if latest := fetchedBy.Add(ttl); e.Fresh.After(latest) {
		t.Fatalf("B's memory entry expires %s after A's fetch time + TTL", e.Expires.Sub(latest))
	}
	// And so, once A's TTL is over, B no longer answers from memory: the
	// next answer is fetched again.
	time.Sleep(time.Until(fetchedBy.Add(ttl + 100*time.Millisecond)))
	if _, miss, _ := b.Lookup(req); miss == nil {
		t.Fatal("B answers from memory past A's fetch time + TTL")
	}
	if ans, err := b.Answer(context.Background(), req); err != nil || ans.Outcome != contract.Miss {
		t.Fatalf("B after the TTL: %v %v, want a miss", ans.Outcome, err)
	}
}

// TestImmutableTTL: with --cache-ttl 1m and --immutable-ttl 1h, an answer
// for a digest reference lives an hour in Redis and one for a tag a
// minute.
func TestImmutableTTL(t *testing.T) {
	f := startFleet(t, 1, 0, WithTTL(time.Minute, time.Hour))
	img := f.reg.PushImage(t, "ttl/app", "v1", testenv.OCIManifest, "linux/amd64")
	rdb := f.redis.Client(t)
	for _, c := range []struct {
		ref      string
		min, max time.Duration
	}{
		{f.reg.Ref("ttl/app", "v1"), 50 * time.Second, time.Minute},
		{f.reg.Ref("ttl/app", img.Digest), 59 * time.Minute, time.Hour},
	} {
		if _, err := f.res[0].Answer(context.Background(), request(contract.OCIManifest, c.ref)); err != nil {
			t.Fatalf("%s: %v", c.ref, err)
		}
		settled(t, f.res[0])
		k := key(t, contract.OCIManifest, c.ref)
		left, err := rdb.PTTL(context.Background(), k).Result()
		testenv.Must(t, err, "PTTL %s", k)
		if left < c.min || left > c.max {
			t.Errorf("%s: Redis TTL %s, want between %s and %s", c.ref, left, c.min, c.max)
		}
	}
}
