package httpfront

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// plain answers GET|HEAD /v1/<function>?image=<ref>[&platform=os/arch]
// and POST /v1/<function> with the waPC payload (a JSON string) as the
// body: the NATS reply's bytes on success, the contract code and
// {"code","message"} on error. HEAD is GET without the body.
func (h *Handler) plain(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	fn, ok := function(r.PathValue("function"))
	if !ok {
		writeError(w, contract.Errorf(404, "no function %q: want manifest_digest, oci_manifest or oci_manifest_config", r.PathValue("function")))
		return
	}
	a, err := h.answer(r, fn)
	if err != nil {
		ce := failure(err)
		h.annotate(r, fn, "")
		h.observer.Request(fn, ce.Code, "", time.Since(start))
		writeError(w, ce)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(a.Body)))
	w.Header().Set(contract.HeaderCache, string(a.Outcome))
	if a.Outcome == contract.Stale {
		w.Header().Set(contract.HeaderAge, strconv.Itoa(int(a.Age.Seconds())))
	}
	_, _ = w.Write(a.Body)
	h.annotate(r, fn, a.Outcome)
	h.observer.Request(fn, 0, a.Outcome, time.Since(start))
}

// answer resolves a plain request. A memory hit costs no place in the
// budget; a miss takes one until its resolution ends, even if the caller
// has gone.
func (h *Handler) answer(r *http.Request, fn contract.Function) (resolve.Answer, error) {
	req := resolve.Request{Function: fn, Platform: r.Header.Get(contract.HeaderPlatform)}
	if p := r.URL.Query().Get("platform"); p != "" {
		req.Platform = p
	}
	if r.Method == http.MethodPost {
		// Never read whole: one byte past the limit tells.
		body, _ := io.ReadAll(io.LimitReader(r.Body, contract.MaxPayload+1))
		if len(body) > contract.MaxPayload {
			return resolve.Answer{}, contract.Errorf(400, "payload over the %d-byte limit", contract.MaxPayload)
		}
		req.Payload = body
	} else {
		req.Payload, _ = json.Marshal(r.URL.Query().Get("image"))
	}
	a, miss, err := h.res.Lookup(req)
	if err != nil || miss == nil {
		return a, err
	}
	if !h.inflight.take() {
		return resolve.Answer{}, h.overBudget()
	}
	defer h.inflight.give()
	return h.res.Resolve(detach(r.Context()), miss)
}

func (h *Handler) overBudget() *contract.Error {
	return contract.Errorf(503, "the HTTP front has %d resolutions in flight, its limit (--http-max-inflight); retry", h.inflight.limit)
}

// writeError writes ce, which failure has made a contract code.
func writeError(w http.ResponseWriter, ce *contract.Error) {
	w.Header().Set("Content-Type", "application/json")
	if ce.Code == 429 && ce.RetryAfter != "" {
		w.Header().Set(contract.HeaderRetryAfter, ce.RetryAfter)
	}
	w.WriteHeader(ce.Code)
	_ = json.NewEncoder(w).Encode(ce)
}
