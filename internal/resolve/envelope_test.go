package resolve

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	fetched := time.Unix(1700000000, 123456789)
	for _, macKey := range [][]byte{nil, []byte("fleet secret")} {
		v := sealValue("k", []byte("body"), fetched, time.Minute, macKey)
		o, err := openValue("k", v, macKey, 16)
		if err != nil || string(o.body) != "body" || !o.fetched.Equal(fetched) || o.staleFor != time.Minute {
			t.Fatalf("key %q: %+v %v", macKey, o, err)
		}
	}
}

// TestEnvelopeRefusals: each way a value can be wrong, as a decoder sees
// it, and the reason it is refused with.
func TestEnvelopeRefusals(t *testing.T) {
	key, secret := "regcap:v2:oci_manifest:r/a:v1", []byte("fleet secret")
	good := sealValue(key, []byte(`{"schemaVersion":2}`), time.Now(), time.Minute, nil)
	signed := sealValue(key, []byte(`{"schemaVersion":2}`), time.Now(), time.Minute, secret)
	flip := func(v []byte, i int) []byte { v = bytes.Clone(v); v[i] ^= 1; return v }
	for _, c := range []struct {
		name   string
		value  []byte
		macKey []byte
		max    int
		reason string
	}{
		{"empty", nil, nil, 64, rejectShort},
		{"garbage", []byte("not an envelope at all, but long enough to pass the header length"), nil, 64, rejectVersion},
		{"raw body of the v1 format", []byte(`{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}`), nil, 128, rejectVersion},
		{"future version", append([]byte{'r', 'c', 2}, good[3:]...), nil, 64, rejectVersion},
		{"body changed", flip(good, len(good)-1), nil, 64, rejectChecksum},
		{"checksum changed", flip(good, 20), nil, 64, rejectChecksum},
		{"truncated body", good[:len(good)-2], nil, 64, rejectChecksum},
		{"over the size limit", good, nil, 4, rejectTooLarge},
		{"unsigned, worker has a key", good, secret, 64, rejectUnsigned},
		{"signed with another key", sealValue(key, []byte(`{}`), time.Now(), time.Minute, []byte("other")), secret, 64, rejectSignature},
		{"signed body changed, checksum fixed", resealBody(signed, []byte(`{"schemaVersion":3}`)), secret, 64, rejectSignature},
		{"signed for another key", sealValue("regcap:v2:oci_manifest:r/b:v1", []byte(`{}`), time.Now(), time.Minute, secret), secret, 64, rejectSignature},
		{"MAC flag, too short", append([]byte{'r', 'c', 1, 1}, make([]byte, envelopeHeader)...), secret, 64, rejectShort},
		{"stale span out of range", func() []byte { v := bytes.Clone(good); v[12] = 0xff; return v }(), nil, 64, rejectVersion},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := openValue(key, c.value, c.macKey, c.max)
			var r *rejection
			if !errors.As(err, &r) || r.reason != c.reason {
				t.Fatalf("got %v, want a %s rejection", err, c.reason)
			}
		})
	}
	// A worker without a key still checks a signed value's sha256.
	if _, err := openValue(key, signed, nil, 64); err != nil {
		t.Fatalf("signed value, worker without a key: %v", err)
	}
}

// resealBody replaces the body of a signed envelope and fixes its sha256,
// as someone without the key could: only the MAC can tell.
func resealBody(signed, body []byte) []byte {
	v := sealValue("", body, time.Now(), time.Minute, nil)
	v[3] = flagMAC
	return append(v, signed[len(signed)-macSize:]...)
}

func FuzzOpenValue(f *testing.F) {
	key, secret := "regcap:v2:manifest_digest:r/a:v1", []byte("k")
	f.Add(sealValue(key, []byte(`{"digest":"sha256:00"}`), time.Now(), time.Minute, nil), false)
	f.Add(sealValue(key, []byte(`{}`), time.Now(), time.Minute, secret), true)
	f.Add([]byte("rc\x01\x01"), true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, v []byte, withKey bool) {
		var k []byte
		if withKey {
			k = secret
		}
		o, err := openValue(key, v, k, 1<<10)
		if err != nil {
			var r *rejection
			if !errors.As(err, &r) {
				t.Fatalf("refusal is not a rejection: %v", err)
			}
			return
		}
		if len(o.body) > 1<<10 {
			t.Fatalf("accepted a body of %d bytes", len(o.body))
		}
		// What is accepted is exactly what a worker would have written
		// around that body (signed when the worker has a key).
		if signed := v[3]&flagMAC != 0; withKey || !signed {
			if again := seal(key, o.body, o.fetched, o.staleFor, v[3]&flagNegative, k); !bytes.Equal(again, v) {
				t.Fatalf("accepted %x, a worker writes %x", v, again)
			}
		}
	})
}

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
	r := f.add(t, 0, WithMemory(0), WithCacheKey(secret), WithMaxAnswer(64<<10), WithLogger(zap.New(core)),
		WithRejectHook(func(reason string) { mu.Lock(); reasons[reason]++; mu.Unlock() }))
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
		{"garbage", func() error { return rdb.Set(ctx, k, "garbage", time.Minute).Err() }, rejectShort},
		{"empty", func() error { return rdb.Set(ctx, k, "", time.Minute).Err() }, rejectShort},
		{"a bare body, as the v1 format", func() error { return rdb.Set(ctx, k, planted, time.Minute).Err() }, rejectVersion},
		{"planted without the key", func() error {
			return rdb.Set(ctx, k, sealValue(k, planted, time.Now(), time.Minute, nil), time.Minute).Err()
		}, rejectUnsigned},
		{"planted with another key", func() error {
			return rdb.Set(ctx, k, sealValue(k, planted, time.Now(), time.Minute, []byte("guess")), time.Minute).Err()
		}, rejectSignature},
		{"oversized", func() error { return rdb.Set(ctx, k, strings.Repeat("x", 1<<20), time.Minute).Err() }, rejectTooLarge},
		{"no expiry", func() error { return rdb.Set(ctx, k, sealValue(k, planted, time.Now(), time.Minute, secret), 0).Err() }, rejectNoTTL},
		{"a list", func() error { return rdb.RPush(ctx, k, "a", "b").Err() }, rejectWrongType},
		{"a hash", func() error { return rdb.HSet(ctx, k, "f", "v").Err() }, rejectWrongType},
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
			if body, _, err := DecodeValue(k, raw, secret); err != nil || !bytes.Equal(body, want) {
				t.Fatalf("the value was not overwritten by the fetch: %v", err)
			}
		})
	}
	// Logged once per key, with the reason, however often it was refused.
	lines := logs.FilterMessageSnippet("refused a value").All()
	if len(lines) != 1 || lines[0].ContextMap()["reason"] != rejectShort || lines[0].ContextMap()["key"] != k {
		t.Errorf("refusals logged %d times (%v), want once for the key, with its first reason", len(lines), lines)
	}
}
