package rediscache

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/regcap/regcap/contract"
)

func TestNoticeRoundTrip(t *testing.T) {
	now := time.Unix(1700000000, 0)
	ch := doneChannel("regcap:v2:manifest_digest:r/a:v1")
	for _, macKey := range [][]byte{nil, []byte("fleet secret")} {
		for _, n := range []notice{
			{OK: true},
			{Abandoned: true},
			{Failure: &contract.Error{Code: 429, Message: "r/a:v1: slow down", RetryAfter: "30"}},
		} {
			p := sealNotice(ch, n, macKey, now)
			if signed := strings.HasPrefix(string(p), noticeSigned); signed != (macKey != nil) {
				t.Fatalf("key %q: payload %s, signed %v", macKey, p, signed)
			}
			got, err := openNotice(ch, string(p), macKey, now.Add(time.Second), 1<<20)
			if err != nil || got.OK != n.OK || got.Abandoned != n.Abandoned || (got.Failure == nil) != (n.Failure == nil) ||
				n.Failure != nil && *got.Failure != *n.Failure {
				t.Fatalf("key %q: %s opened as %+v, %v", macKey, p, got, err)
			}
		}
	}
}

// TestNoticeRefusals: each way a notice can be wrong, as a worker sees it,
// and the reason it is ignored with.
func TestNoticeRefusals(t *testing.T) {
	now := time.Unix(1700000000, 0)
	secret, other := []byte("fleet secret"), []byte("not the fleet's")
	ch := doneChannel("regcap:v2:oci_manifest:r/a:v1")
	forged := notice{Failure: &contract.Error{Code: 404, Message: "r/a:v1: forged"}}
	unsigned := string(sealNotice(ch, forged, nil, now))
	signed := string(sealNotice(ch, forged, secret, now))
	for _, c := range []struct {
		name, payload string
		macKey        []byte
		reason        string
	}{
		{"unsigned, worker has a key", unsigned, secret, noticeUnsigned},
		{"signed with another key", string(sealNotice(ch, forged, other, now)), secret, noticeSignature},
		{"signed for another key's channel", string(sealNotice(doneChannel("regcap:v2:oci_manifest:r/b:v1"), forged, secret, now)), secret, noticeSignature},
		{"signed, message changed", strings.Replace(signed, "forged", "forgeD", 1), secret, noticeSignature},
		{"signed, MAC cut short", signed[:len(noticeSigned)+10], secret, noticeUnsigned},
		{"signed, sent long ago (a replay)", string(sealNotice(ch, forged, secret, now.Add(-noticeSkew-time.Second))), secret, noticeDate},
		{"signed, dated ahead", string(sealNotice(ch, forged, secret, now.Add(noticeSkew+time.Second))), secret, noticeDate},
		{"not JSON", "hello", nil, noticeMalformed},
		{"empty object", "{}", nil, noticeMalformed},
		{"two kinds at once", `{"ok":true,"abandoned":true}`, nil, noticeMalformed},
		{"code outside the table", `{"failure":{"code":200,"message":"fine"}}`, nil, noticeCode},
		{"code outside HTTP", `{"failure":{"code":-1,"message":"crash"}}`, nil, noticeCode},
		{"too large", `{"failure":{"code":404,"message":"` + strings.Repeat("x", maxNotice) + `"}}`, nil, noticeTooLarge},
		{"a value over the largest", `{"ok":true,"fetched":1,"expires":2}` + "\n" + strings.Repeat("x", 1<<20+1), nil, noticeTooLarge},
		{"a value after a failure", `{"failure":{"code":404}}` + "\nrc", nil, noticeMalformed},
		{"a value the notice does not describe", `{"ok":true}` + "\nrc", nil, noticeMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := openNotice(ch, c.payload, c.macKey, now, 1<<20)
			var r *rejection
			if !errors.As(err, &r) || r.reason != c.reason {
				t.Fatalf("got %v, want a %s rejection", err, c.reason)
			}
		})
	}
	// Without a key, both forms are read, as before signing existed.
	for _, p := range []string{unsigned, signed} {
		if n, err := openNotice(ch, p, nil, now.Add(time.Hour), 1<<20); err != nil || n.Failure == nil || n.Failure.Message != "r/a:v1: forged" {
			t.Fatalf("worker without a key, %s: %+v %v", p, n, err)
		}
	}
}

// TestNoticeFailureBounded: whatever a failure notice holds, what a
// waiter answers is one line of at most contract.MaxMessage, with a
// Retry-After no longer than a valid one.
func TestNoticeFailureBounded(t *testing.T) {
	ch := doneChannel("k")
	p := `{"failure":{"code":429,"message":"line one\r\nInjected: header` + strings.Repeat("é", 2000) + `","retry_after":"` + strings.Repeat("9", 100) + `"}}`
	n, err := openNotice(ch, p, nil, time.Now(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if m := n.Failure.Message; len(m) > contract.MaxMessage || strings.ContainsAny(m, "\r\n") || !utf8.ValidString(m) {
		t.Fatalf("message of %d bytes: %q", len(m), m)
	}
	if n.Failure.RetryAfter != "" {
		t.Fatalf("Retry-After %q kept", n.Failure.RetryAfter)
	}
	// A worker sends what its peers accept: bounded before signing.
	long := &contract.Error{Code: 502, Message: strings.Repeat("x", 3*contract.MaxMessage), RetryAfter: strings.Repeat("1", 100)}
	now := time.Now()
	if n, err := openNotice(ch, string(sealNotice(ch, notice{Failure: long}, []byte("k"), now)), []byte("k"), now, 1<<20); err != nil ||
		len(n.Failure.Message) > contract.MaxMessage || n.Failure.RetryAfter != "" {
		t.Fatalf("a long failure, sealed and opened: %+v %v", n, err)
	}
}

func FuzzOpenNotice(f *testing.F) {
	now := time.Unix(1700000000, 0)
	ch, secret := doneChannel("regcap:v2:manifest_digest:r/a:v1"), []byte("k")
	for _, n := range []notice{{OK: true}, {Abandoned: true}, {Failure: &contract.Error{Code: 429, Message: "m", RetryAfter: "1"}}} {
		f.Add(string(sealNotice(ch, n, nil, now)), false)
		f.Add(string(sealNotice(ch, n, secret, now)), true)
	}
	carrying := notice{OK: true, Fetched: now.UnixNano(), Expires: now.Add(time.Minute).UnixNano()}
	f.Add(string(sealNotice(ch, carrying, nil, now))+"\nrc\x01value", false)
	f.Add(string(sealNotice(ch, carrying, secret, now))+"\nrc\x01value", true)
	f.Add(`{"abandoned":true}`+"\nvalue", false)
	f.Add("s1:", true)
	f.Add(`{"failure":{"code":404}}`, false)
	f.Add(`{"failure":{"code":502,"message":"a\nb\u00e9"}}`, false)
	f.Fuzz(func(t *testing.T, payload string, withKey bool) {
		var k []byte
		if withKey {
			k = secret
		}
		n, err := openNotice(ch, payload, k, now, 1<<20)
		if err != nil {
			var r *rejection
			if !errors.As(err, &r) {
				t.Fatalf("refusal is not a rejection: %v", err)
			}
			return
		}
		kinds := 0
		for _, set := range []bool{n.OK, n.Abandoned, n.Failure != nil} {
			if set {
				kinds++
			}
		}
		if kinds != 1 {
			t.Fatalf("accepted %q as %+v", payload, n)
		}
		if f := n.Failure; f != nil && (!contract.ValidCode(f.Code) || len(f.Message) > contract.MaxMessage ||
			strings.ContainsAny(f.Message+f.RetryAfter, "\r\n") || len(f.RetryAfter) > maxRetryAfter) {
			t.Fatalf("accepted %q with failure %+v", payload, *f)
		}
		// With a key, what is accepted is exactly what a worker with the
		// key sends.
		head, value, carries := strings.Cut(payload, "\n")
		if carries && (!n.OK || n.value != value) {
			t.Fatalf("accepted %q with value %q", payload, n.value)
		}
		if withKey {
			if again := sealNotice(ch, n, k, time.Unix(0, n.At)); string(again) != head {
				t.Fatalf("accepted %q, a worker sends %q", head, again)
			}
		}
	})
}
