package httpfront_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/httpfront"
	"github.com/regcap/regcap/internal/resolve"
)

// BenchmarkPlain is the front's own cost per plain request, a memory hit
// of a stub resolver served without a listener, TLS or a resolver behind
// it. The whole worker's, over HTTPS, is test/e2e's BenchmarkHTTPHit.
//
//	go test -run '^$' -bench Plain -benchmem ./internal/httpfront/
func BenchmarkPlain(b *testing.B) {
	res := newStub().set("app:v1", stubAnswer{Answer: resolve.Answer{Body: []byte(digestBody), Outcome: contract.Hit}, memory: true})
	h := httpfront.New(res)
	req, _ := http.NewRequest("GET", "/v1/manifest_digest?image=app:v1", nil)
	for b.Loop() {
		w := &discard{}
		h.ServeHTTP(w, req)
		if w.code != 0 && w.code != 200 {
			b.Fatalf("status %d", w.code)
		}
	}
}

// BenchmarkGatekeeper is the front's own cost per ProviderRequest of 100
// keys: memory hits, and misses the stub answers at once (grouped by
// entry, resolved through the batch's share of the budget, streamed).
// The whole worker's is test/e2e's BenchmarkHTTPGatekeeperBatch.
//
//	go test -run '^$' -bench Gatekeeper -benchmem ./internal/httpfront/
func BenchmarkGatekeeper(b *testing.B) {
	for _, memory := range []bool{true, false} {
		name := map[bool]string{true: "100-memory-hits", false: "100-misses"}[memory]
		b.Run(name, func(b *testing.B) {
			res := newStub()
			ks := numbered("app:", 100)
			for _, k := range ks {
				res.set(k, stubAnswer{Answer: resolve.Answer{Body: []byte(digestBody), Outcome: contract.Miss}, memory: memory})
			}
			h := httpfront.New(res)
			body := keys(ks...)
			for b.Loop() {
				req, _ := http.NewRequest("POST", "/gatekeeper/v1/manifest_digest", strings.NewReader(body))
				w := &discard{}
				h.ServeHTTP(w, req)
				if w.n < 100*len(`{"key":"app:0","value":"sha256:"}`) {
					b.Fatalf("reply of %d bytes", w.n)
				}
			}
		})
	}
}
