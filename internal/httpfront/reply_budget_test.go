package httpfront_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/httpfront"
)

// bigAnswer is a valid JSON answer of n bytes.
func bigAnswer(n int) string {
	const head, tail = `{"pad":"`, `"}`
	return head + strings.Repeat("a", n-len(head)-len(tail)) + tail
}

// TestReplyBudget: values that would take a reply past
// --http-max-reply-bytes are 413 items, whether they are written at once
// or wait behind a key that hangs until the timeout; errors are kept.
// Values are counted as their answers come in, so which keys get the 413
// follows that order: request order for the keys of one entry.
func TestReplyBudget(t *testing.T) {
	const size = 1000
	ks := numbered("k", 10) // keys of one length: items of one size
	head := len(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderResponse","response":{"idempotent":true,"items":[]}}` + "\n")
	item := len(`,{"key":"k0","value":}`) + size
	for _, c := range []struct {
		name   string
		budget int
		hung   bool // ks[0] hangs past the timeout
		one    bool // the keys name one entry
		values int  // values answered, the rest 413
	}{
		{"room for three", head + 3*item, false, false, 3},
		{"one byte short of three", head + 3*item - 1, false, false, 2},
		{"room for none", head, false, false, 0},
		{"room for all", head + 10*item, false, false, 10},
		{"behind a hung key", head + 3*item, true, false, 3},
		{"one entry: the first three keys", head + 3*item, false, true, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := newStub()
			for _, k := range ks {
				res.answer(k, bigAnswer(size), contract.Miss)
			}
			if c.hung {
				res.hold(t, ks[0])
			}
			if c.one {
				res.same(ks[0], ks[1:]...)
			}
			_, srv := start(t, res, httpfront.WithMaxReplyBytes(c.budget), httpfront.WithTimeout(100*time.Millisecond))
			_, _, reply := do(t, srv.URL+"/gatekeeper/v1/oci_manifest", "POST", keys(ks...), nil)
			var pr providerResponse
			if err := json.Unmarshal([]byte(reply), &pr); err != nil {
				t.Fatalf("reply is not JSON: %v", err)
			}
			values, overs := 0, 0
			for i, it := range pr.items(t) {
				switch {
				case c.hung && i == 0:
					if !strings.HasPrefix(it.Error, "504: ") {
						t.Errorf("hung key: %+v, want its 504 kept", it)
					}
				case it.Error == "":
					values++
					if overs > 0 && c.one {
						t.Errorf("item %d has a value after a 413: one entry's keys are counted in request order", i)
					}
				case it.Error == fmt.Sprintf("413: reply over the %d-byte limit (--http-max-reply-bytes); ask for this key in a smaller batch", c.budget):
					overs++
				default:
					t.Errorf("item %d: %+v", i, it)
				}
			}
			if values != c.values {
				t.Errorf("%d values, want %d", values, c.values)
			}
			overhead := 0
			for range overs {
				overhead += len(`,{"key":"k0","error":"413: reply over the 1234567-byte limit (--http-max-reply-bytes); ask for this key in a smaller batch"}`)
			}
			if c.hung {
				overhead += 200 // the 504 item
			}
			if len(reply) > c.budget+overhead {
				t.Errorf("reply of %d bytes, over the %d-byte budget plus %d for the error items", len(reply), c.budget, overhead)
			}
		})
	}
}

// TestReplyMemoryBounded: 1,024 keys spelling one image whose answer is
// 1 MiB are resolved once, and the reply stays within the default 8 MiB
// budget (plus its 413 items) instead of 1 GiB; building it allocates
// little more than the request's own keys, never a copy per item.
func TestReplyMemoryBounded(t *testing.T) {
	const d = "sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"
	const answer = 1 << 20
	res := newStub().answer("reg.example/app@"+d, bigAnswer(answer), contract.Miss)
	ks := make([]string, 1024)
	keyBytes := 0
	for i := range ks {
		ks[i] = fmt.Sprintf("reg.example/app:tag-%d@%s", i, d)
		keyBytes += len(ks[i])
	}
	h := httpfront.New(res)
	body := keys(ks...)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	w := &discard{}
	req, _ := http.NewRequest("POST", "/gatekeeper/v1/oci_manifest_config", strings.NewReader(body))
	h.ServeHTTP(w, req)
	runtime.ReadMemStats(&after)

	if n := res.resolutions("oci_manifest_config:reg.example/app@" + d); n != 1 {
		t.Errorf("%d resolutions for 1,024 spellings of one entry, want 1", n)
	}
	perKey := len(`,{"key":"","error":"413: reply over the 8388608-byte limit (--http-max-reply-bytes); ask for this key in a smaller batch"}`)
	if limit := httpfront.DefaultMaxReplyBytes + keyBytes + len(ks)*perKey; w.n > limit || w.n < httpfront.DefaultMaxReplyBytes-answer {
		t.Errorf("reply of %d bytes, want the %d-byte budget filled and at most %d with the 413 items", w.n, httpfront.DefaultMaxReplyBytes, limit)
	}
	// The request's keys, decoded and re-encoded, and per key a few small
	// allocations; 1 MiB copied even once per item would be 1 GiB.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("answering allocated %d bytes, want under 4 MiB: the answer is shared, never copied per item", alloc)
	}
}
