package httpfront

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/regcap/regcap/contract"
)

// Gatekeeper's external data protocol, externaldata.gatekeeper.sh/v1beta1.
const (
	gkAPIVersion = "externaldata.gatekeeper.sh/v1beta1"
	gkRequest    = "ProviderRequest"
	gkResponse   = "ProviderResponse"
)

// maxBody bounds a ProviderRequest body.
const maxBody = 1 << 20

type providerRequest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    struct {
		Keys []string `json:"keys"`
	} `json:"request"`
}

// gatekeeper answers POST /gatekeeper/v1/<function|pin> with a
// ProviderResponse: HTTP 200 whenever the body could be read, one item
// per distinct key in request order, a key's failure in its item.
func (h *Handler) gatekeeper(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	name := r.PathValue("function")
	pin := name == "pin"
	fn, ok := function(name)
	if pin {
		fn, ok = contract.ManifestDigest, true
	}
	if !ok {
		writeSystemError(w, fmt.Sprintf("no function %q: want manifest_digest, oci_manifest, oci_manifest_config or pin", name))
		return
	}
	keys, msg := h.readKeys(w, r)
	if msg != "" {
		writeSystemError(w, msg)
		return
	}
	// The reply is due at the timeout; what was started by then goes on
	// (detached from the request) and keeps its place in the budget.
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	b := h.newBatch(fn, pin, distinct(keys), r.Header.Get(contract.HeaderPlatform), start)
	b.start(ctx, detach(r.Context()))
	b.write(ctx, w)
}

// readKeys reads a ProviderRequest's keys, or says why it cannot be
// answered (its systemError).
func (h *Handler) readKeys(w http.ResponseWriter, r *http.Request) ([]string, string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return nil, fmt.Sprintf("request body over %d bytes", maxBody)
	}
	var pr providerRequest
	switch {
	case json.Unmarshal(body, &pr) != nil:
		return nil, "request is not a JSON ProviderRequest"
	case pr.APIVersion != gkAPIVersion || pr.Kind != gkRequest:
		return nil, fmt.Sprintf("want kind %s of %s, got %q of %q", gkRequest, gkAPIVersion, pr.Kind, pr.APIVersion)
	case len(pr.Request.Keys) > h.maxKeys:
		return nil, fmt.Sprintf("%d keys, over the %d-key limit (--http-max-keys)", len(pr.Request.Keys), h.maxKeys)
	}
	return pr.Request.Keys, ""
}

// writeSystemError answers a request that could not be taken: no items.
func writeSystemError(w http.ResponseWriter, msg string) {
	var resp struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Response   struct {
			Idempotent  bool       `json:"idempotent"`
			Items       []struct{} `json:"items"`
			SystemError string     `json:"systemError"`
		} `json:"response"`
	}
	resp.APIVersion, resp.Kind = gkAPIVersion, gkResponse
	resp.Response.Idempotent, resp.Response.Items, resp.Response.SystemError = true, []struct{}{}, msg
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// distinct drops repeated keys, keeping the first of each in order.
func distinct(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}
