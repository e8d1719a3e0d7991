package rediscache

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"

	"fmt"
	"time"
)

// A Redis value is an envelope around the reply body, so that a value
// that was corrupted, truncated, written by something else, or (with a
// fleet key) planted by anyone who can write to Redis but lacks the key,
// is refused instead of served. Layout, integers big-endian:
//
//	offset  size  field
//	0       2     magic "rc"
//	2       1     version (1)
//	3       1     flags: bit 0 set when a MAC follows the body; bit 1
//	              when the entry is a cached 404, its message as the body
//	4       8     fetch time, Unix nanoseconds
//	12      8     stale span, nanoseconds: the entry stops being fresh
//	              this long before the key expires (--stale-if-error)
//	20      32    sha256 of the body
//	52      n     body, the reply exactly as sent
//	52+n    32    HMAC-SHA256 over the Redis key, a zero byte and bytes
//	              0 to 52+n, with the fleet's --cache-key (flag bit 0)
//
// The MAC covers the key, so that a valid value cannot be copied to
// another key (one image's answer served for another).
const (
	envelopeVersion = 1
	envelopeHeader  = 52
	macSize         = sha256.Size
	flagMAC         = 1
	flagNegative    = 2
)

var envelopeMagic = [2]byte{'r', 'c'}

// Reasons a value is refused, as metrics and logs name them.
const (
	rejectShort     = "short"
	rejectVersion   = "version"
	rejectChecksum  = "checksum"
	rejectUnsigned  = "unsigned"
	rejectSignature = "signature"
	rejectTooLarge  = "too_large"
	rejectWrongType = "wrong_type"
	rejectNoTTL     = "no_ttl"
	// rejectExpired: older than the fleet's longest TTL and its stale
	// span (WithMaxTTL), whatever the key's expiry says.
	rejectExpired = "expired"
)

// rejection is why a Redis value was refused.
type rejection struct{ reason, detail string }

func (r *rejection) Error() string { return r.reason + ": " + r.detail }

// EncodeValue is the Redis value a worker stores under key for body,
// fetched at fetched and stale for the last staleFor of its life; with
// macKey (the fleet's --cache-key) it is signed. For tools and tests that
// write into Redis, as DecodeValue is for those that read.
func EncodeValue(key string, body []byte, fetched time.Time, staleFor time.Duration, macKey []byte) []byte {
	return seal(key, body, fetched, staleFor, 0, macKey)
}

// sealEntry wraps e for key.
func sealEntry(key string, e Entry, macKey []byte) []byte {
	var flags byte
	if e.Negative {
		flags = flagNegative
	}
	return seal(key, e.Body, e.Fetched, e.Expires.Sub(e.Fresh), flags, macKey)
}

func seal(key string, body []byte, fetched time.Time, staleFor time.Duration, flags byte, macKey []byte) []byte {
	n := envelopeHeader + len(body)
	if macKey != nil {
		n += macSize
	}
	v := make([]byte, envelopeHeader, n)
	copy(v, envelopeMagic[:])
	v[2] = envelopeVersion
	v[3] = flags
	if macKey != nil {
		v[3] |= flagMAC
	}
	binary.BigEndian.PutUint64(v[4:12], uint64(fetched.UnixNano()))
	binary.BigEndian.PutUint64(v[12:20], uint64(max(staleFor, 0)))
	sum := sha256.Sum256(body)
	copy(v[20:52], sum[:])
	v = append(v, body...)
	if macKey != nil {
		v = append(v, mac(macKey, key, v)...)
	}
	return v
}

// opened is what a valid value holds.
type opened struct {
	body     []byte
	fetched  time.Time
	staleFor time.Duration
	negative bool
}

// openValue checks value, read from key, and returns what it holds. With
// macKey, only a value signed with it is accepted. maxBody bounds the
// body.
func openValue(key string, value []byte, macKey []byte, maxBody int) (opened, error) {
	if len(value) < envelopeHeader {
		return opened{}, &rejection{rejectShort, fmt.Sprintf("%d bytes, under the %d-byte header", len(value), envelopeHeader)}
	}
	if !bytes.Equal(value[:2], envelopeMagic[:]) || value[2] != envelopeVersion {
		return opened{}, &rejection{rejectVersion, fmt.Sprintf("not a version-%d envelope (starts %q)", envelopeVersion, value[:3])}
	}
	signed := value[3]&flagMAC != 0
	end := len(value)
	if signed {
		end -= macSize
		if end < envelopeHeader {
			return opened{}, &rejection{rejectShort, "too short for its MAC"}
		}
	}
	switch {
	case macKey != nil && !signed:
		return opened{}, &rejection{rejectUnsigned, "not signed, and this worker has a cache key"}
	case macKey != nil && !hmac.Equal(value[end:], mac(macKey, key, value[:end])):
		return opened{}, &rejection{rejectSignature, "MAC does not verify with this worker's cache key"}
	}
	body := value[envelopeHeader:end]
	if len(body) > maxBody {
		return opened{}, &rejection{rejectTooLarge, fmt.Sprintf("body of %d bytes, over %d", len(body), maxBody)}
	}
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], value[20:52]) {
		return opened{}, &rejection{rejectChecksum, "body does not match its sha256"}
	}
	staleFor := binary.BigEndian.Uint64(value[12:20])
	if staleFor > uint64(maxStaleFor) {
		return opened{}, &rejection{rejectVersion, "stale span out of range"}
	}
	if value[3]&^(flagMAC|flagNegative) != 0 {
		return opened{}, &rejection{rejectVersion, fmt.Sprintf("unknown flags %#x", value[3])}
	}
	return opened{
		body:     body,
		fetched:  time.Unix(0, int64(binary.BigEndian.Uint64(value[4:12]))),
		staleFor: time.Duration(staleFor),
		negative: value[3]&flagNegative != 0,
	}, nil
}

func mac(macKey []byte, key string, signed []byte) []byte {
	h := hmac.New(sha256.New, macKey)
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write(signed)
	return h.Sum(nil)
}

// maxStaleFor bounds the stale span a value may claim.
const maxStaleFor = 30 * 24 * time.Hour

// DecodeValue returns the reply body and fetch time held in value, the
// Redis value of key, after checking it as a worker does (macKey: the
// fleet's --cache-key, nil for none). For tools and tests that look into
// Redis.
func DecodeValue(key string, value, macKey []byte) ([]byte, time.Time, error) {
	o, err := openValue(key, value, macKey, len(value))
	return o.body, o.fetched, err
}
