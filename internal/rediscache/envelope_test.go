package rediscache

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	fetched := time.Unix(1700000000, 123456789)
	for _, macKey := range [][]byte{nil, []byte("fleet secret")} {
		v := EncodeValue("k", []byte("body"), fetched, time.Minute, macKey)
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
	good := EncodeValue(key, []byte(`{"schemaVersion":2}`), time.Now(), time.Minute, nil)
	signed := EncodeValue(key, []byte(`{"schemaVersion":2}`), time.Now(), time.Minute, secret)
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
		{"signed with another key", EncodeValue(key, []byte(`{}`), time.Now(), time.Minute, []byte("other")), secret, 64, rejectSignature},
		{"signed body changed, checksum fixed", resealBody(signed, []byte(`{"schemaVersion":3}`)), secret, 64, rejectSignature},
		{"signed for another key", EncodeValue("regcap:v2:oci_manifest:r/b:v1", []byte(`{}`), time.Now(), time.Minute, secret), secret, 64, rejectSignature},
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
	v := EncodeValue("", body, time.Now(), time.Minute, nil)
	v[3] = flagMAC
	return append(v, signed[len(signed)-macSize:]...)
}

func FuzzOpenValue(f *testing.F) {
	key, secret := "regcap:v2:manifest_digest:r/a:v1", []byte("k")
	f.Add(EncodeValue(key, []byte(`{"digest":"sha256:00"}`), time.Now(), time.Minute, nil), false)
	f.Add(EncodeValue(key, []byte(`{}`), time.Now(), time.Minute, secret), true)
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
