package rediscache

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/regcap/regcap/contract"
)

// A fleet-lock notice tells a key's waiters what its holder did. Anyone
// who can write to Redis can publish on a notice channel, so with the
// fleet's --cache-key a notice is signed, and a worker with the key heeds
// only notices signed for their channel and sent recently:
//
//	without --cache-key:  <JSON>                   (as before)
//	with --cache-key:     s1:<HMAC, 64 hex>:<JSON>
//
// JSON is {"ok":true[,"fetched":…,"expires":…]}, {"abandoned":true} or
// {"failure":{"code":…,"message":…[,"retry_after":…]}}; a signed one
// also has "at", the sender's clock in Unix nanoseconds. An "ok" notice
// may carry the stored value after a newline (which JSON never holds
// raw), so that its waiters need not read it: the value is an envelope,
// checked as one read from Redis (with --cache-key its own MAC covers
// the key), and "fetched" (its fetch time, Unix nanoseconds) binds it to
// the signed notice; "expires" is when its key expires, for freshness. The HMAC-SHA256, keyed with
// --cache-key, covers the channel, one zero byte and JSON: the channel so
// that a notice about one key cannot be replayed on another's, "at" so
// that an old one cannot be replayed on the same channel later (a 404
// from last week answered today).
//
// A worker without a key reads both forms and checks nothing it cannot:
// it trusts Redis as before. A worker with a key ignores unsigned notices.
const (
	noticeSigned = "s1:"
	noticeMACHex = 2 * sha256.Size
	// noticeSkew is how far a signed notice's date may be from the
	// receiver's clock: the fleet's clocks must agree that well (NTP does
	// far better). A notice outside it is ignored, and its waiters fall
	// back to their periodic check.
	noticeSkew = 5 * time.Second
	// maxNotice bounds a notice's payload before anything is parsed: a
	// failure's message is at most contract.MaxMessage, which JSON's
	// escaping can grow sixfold.
	maxNotice = 16 << 10
	// maxRetryAfter bounds a failure's Retry-After: a valid one (seconds
	// or an HTTP date) is a few dozen bytes.
	maxRetryAfter = 64
)

// notice is what a holder tells its waiters, as JSON. Exactly one of OK,
// Abandoned and Failure is set. A failure is never cached: it is passed
// on once, in contract.Error's own JSON form.
type notice struct {
	OK        bool            `json:"ok,omitempty"`
	Abandoned bool            `json:"abandoned,omitempty"`
	Failure   *contract.Error `json:"failure,omitempty"`
	// At is when the notice was sent, Unix nanoseconds: signed notices
	// only.
	At int64 `json:"at,omitempty"`
	// Fetched and Expires describe the value an "ok" stored: its fetch
	// time and its key's expiry, Unix nanoseconds.
	Fetched int64 `json:"fetched,omitempty"`
	Expires int64 `json:"expires,omitempty"`
	// value is the stored envelope, when the notice carries it.
	value string
}

// Reasons a notice is ignored, as the reject hook and the log name them.
const (
	noticeTooLarge  = "notice_too_large"
	noticeMalformed = "notice_malformed"
	noticeUnsigned  = "notice_unsigned"
	noticeSignature = "notice_signature"
	noticeCode      = "notice_code"
	noticeDate      = "notice_date"
)

// sealNotice is the payload that tells channel's waiters n, signed with
// macKey (nil: unsigned) and dated now. A failure's message and
// Retry-After are bounded here as the receiver bounds them, so that a
// worker never sends what its peers would refuse.
func sealNotice(channel string, n notice, macKey []byte, now time.Time) []byte {
	if n.Failure != nil {
		f := *n.Failure
		f.Message = contract.Bound(f.Message)
		f.RetryAfter = boundRetryAfter(f.RetryAfter)
		n.Failure = &f
	}
	n.At = 0
	if macKey != nil {
		n.At = now.UnixNano()
	}
	msg, _ := json.Marshal(n) // of plain fields: cannot fail
	if macKey == nil {
		return msg
	}
	out := make([]byte, 0, len(noticeSigned)+noticeMACHex+1+len(msg))
	out = append(out, noticeSigned...)
	out = hex.AppendEncode(out, noticeMAC(macKey, channel, msg))
	out = append(out, ':')
	return append(out, msg...)
}

func noticeMAC(macKey []byte, channel string, msg []byte) []byte {
	h := hmac.New(sha256.New, macKey)
	h.Write([]byte(channel))
	h.Write([]byte{0})
	h.Write(msg)
	return h.Sum(nil)
}

// openNotice checks payload, received on channel, and returns the notice
// it holds. With macKey only a notice signed with it for channel, dated
// within noticeSkew of now, is accepted. Refusals are *rejection.
func openNotice(channel, payload string, macKey []byte, now time.Time, maxValue int) (notice, error) {
	head, value, carries := strings.Cut(payload, "\n")
	switch {
	case len(head) > maxNotice:
		return notice{}, &rejection{noticeTooLarge, fmt.Sprintf("%d bytes, over %d", len(head), maxNotice)}
	case len(value) > maxValue:
		return notice{}, &rejection{noticeTooLarge, fmt.Sprintf("a value of %d bytes, over %d", len(value), maxValue)}
	}
	msg, sum, signed := splitNotice(head)
	switch {
	case macKey != nil && !signed:
		return notice{}, &rejection{noticeUnsigned, "not signed, and this worker has a cache key"}
	case macKey != nil && !hmac.Equal(sum, noticeMAC(macKey, channel, []byte(msg))):
		return notice{}, &rejection{noticeSignature, "MAC does not verify for this channel with this worker's cache key"}
	}
	var n notice
	if err := json.Unmarshal([]byte(msg), &n); err != nil {
		return notice{}, &rejection{noticeMalformed, err.Error()}
	}
	kinds := 0
	for _, set := range []bool{n.OK, n.Abandoned, n.Failure != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return notice{}, &rejection{noticeMalformed, "not exactly one of ok, abandoned, failure"}
	}
	if n.Failure != nil {
		if !contract.ValidCode(n.Failure.Code) {
			return notice{}, &rejection{noticeCode, fmt.Sprintf("code %d is not in the contract's table", n.Failure.Code)}
		}
		n.Failure.Message = contract.Bound(n.Failure.Message)
		n.Failure.RetryAfter = boundRetryAfter(n.Failure.RetryAfter)
	}
	if carries && (!n.OK || n.Fetched == 0 || n.Expires == 0) {
		return notice{}, &rejection{noticeMalformed, "a value after a notice that does not describe one"}
	}
	n.value = value
	if macKey != nil {
		if d := now.Sub(time.Unix(0, n.At)); d > noticeSkew || d < -noticeSkew {
			return notice{}, &rejection{noticeDate, fmt.Sprintf("sent %v from this worker's clock, beyond ±%v", d.Round(time.Millisecond), noticeSkew)}
		}
	}
	return n, nil
}

// boundRetryAfter drops a Retry-After longer than any valid one and
// keeps the rest on one line: it becomes a reply header.
func boundRetryAfter(v string) string {
	if len(v) > maxRetryAfter {
		return ""
	}
	return contract.Bound(v)
}

// splitNotice separates a signed payload into its JSON and its MAC; an
// unsigned one is all JSON. A payload that starts like a signed one but
// is cut short is unsigned, and then not JSON.
func splitNotice(payload string) (msg string, sum []byte, signed bool) {
	rest, ok := strings.CutPrefix(payload, noticeSigned)
	if !ok || len(rest) <= noticeMACHex || rest[noticeMACHex] != ':' {
		return payload, nil, false
	}
	sum, err := hex.DecodeString(rest[:noticeMACHex])
	if err != nil {
		return payload, nil, false
	}
	return rest[noticeMACHex+1:], sum, true
}
