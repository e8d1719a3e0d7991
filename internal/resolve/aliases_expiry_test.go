package resolve

import (
	"bytes"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestHitsAliasesAndExpiry: the aliases of one reference share one key,
// so that they are hits without reaching the registry, for every function
// and in every tier; past the TTL the answer is fetched again.
func TestHitsAliasesAndExpiry(t *testing.T) {
	const ttl = time.Second
	for _, tier := range []struct {
		name  string
		redis bool
		opts  []Option
	}{
		{"memory", false, nil},
		{"memory and redis", true, nil},
		{"redis", true, []Option{WithMemory(0)}},
	} {
		t.Run(tier.name, func(t *testing.T) {
			reg := testenv.StartRegistry(t)
			opts := append([]Option{WithTTL(ttl, 0)}, tier.opts...)
			var r *Resolver
			if tier.redis {
				r = (&fleet{reg: reg, redis: testenv.StartRedis(t)}).add(t, 0, opts...)
			} else {
				r = newResolver(t, opts...)
			}
			img := reg.PushImage(t, "cached", "latest", testenv.OCIManifest, "linux/amd64")

			for _, fn := range functions {
				first := mustAnswer(t, r, request(fn, reg.Host+"/cached"))
				before := reg.Counts()
				// Aliases of one reference share one key.
				for _, alias := range []string{reg.Host + "/cached", reg.Host + "/cached:latest"} {
					a := mustAnswer(t, r, request(fn, alias))
					if a.Outcome != contract.Hit || !bytes.Equal(a.Body, first.Body) {
						t.Errorf("%s %s: cache %q", fn, alias, a.Outcome)
					}
				}
				if after := reg.Counts(); !sameCounts(after, before) {
					t.Errorf("%s: hits reached the registry: %v then %v", fn, before, after)
				}
			}

			// Past the TTL the answer is fetched again.
			heads := reg.Count("HEAD", "manifest")
			time.Sleep(ttl + 200*time.Millisecond)
			a := mustAnswer(t, r, request(contract.ManifestDigest, reg.Ref("cached", "latest")))
			if a.Outcome != contract.Miss || !bytes.Equal(a.Body, digestJSON(img.Digest)) {
				t.Errorf("after the TTL: cache %q", a.Outcome)
			}
			if got := reg.Count("HEAD", "manifest"); got != heads+1 {
				t.Errorf("after the TTL: %d HEADs, want %d", got, heads+1)
			}
		})
	}
}
