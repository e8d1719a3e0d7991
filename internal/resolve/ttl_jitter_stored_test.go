package resolve

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestJitteredTTLStored: with --ttl-jitter 0.1, every entry stored, in
// Redis and in memory, lives within ±10 % of the TTL from its fetch,
// across many keys, and the TTLs do spread. Jitter applied twice (to the
// memory entry and again to the Redis write, say) would put some outside.
func TestJitteredTTLStored(t *testing.T) {
	const ttl, jitter, n = 20 * time.Second, 0.1, 60
	f := startFleet(t, 1, 0, WithTTL(ttl, 0), WithTTLJitter(jitter))
	r := f.res[0]
	rdb := f.redis.Client(t)
	lo, hi := time.Duration(float64(ttl)*(1-jitter)), time.Duration(float64(ttl)*(1+jitter))
	var minMem, maxMem time.Duration = hi, lo
	for i := range n {
		tag := fmt.Sprint("v", i)
		f.reg.PushImage(t, "jitter/app", tag, testenv.OCIManifest, "linux/amd64")
		ref := f.reg.Ref("jitter/app", tag)
		before := time.Now()
		if _, err := r.Answer(context.Background(), request(contract.ManifestDigest, ref)); err != nil {
			t.Fatal(err)
		}
		settled(t, r)
		after := time.Now()
		k := key(t, contract.ManifestDigest, ref)
		e, ok := r.mem.Get(k)
		if !ok {
			t.Fatalf("%s: not in memory", tag)
		}
		if life := e.Fresh.Sub(e.Fetched); life < lo || life > hi {
			t.Errorf("%s: memory entry fresh for %s after its fetch, want %s–%s", tag, life, lo, hi)
		} else {
			minMem, maxMem = min(minMem, life), max(maxMem, life)
		}
		// What Redis holds counts from the write, a little after the fetch
		// started: within [lo - the answer's time, hi].
		pttl := rdb.PTTL(context.Background(), k).Val()
		if pttl > hi || pttl < lo-after.Sub(before)-time.Second {
			t.Errorf("%s: Redis TTL %s, want within %s–%s", tag, pttl, lo, hi)
		}
		if d := e.Expires.Sub(e.Fresh); d != 0 {
			t.Errorf("%s: kept %s past fresh without --stale-if-error", tag, d)
		}
	}
	if spread := maxMem - minMem; spread < ttl/10 {
		t.Errorf("%d TTLs spread over %s only: jitter not applied", n, spread)
	}
}
