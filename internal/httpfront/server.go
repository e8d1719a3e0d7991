// Package httpfront serves a resolver over HTTP, for the policy engines
// that do not speak NATS: a plain JSON API (GET|POST /v1/<function>) for
// Kyverno's apiCall, curl and scripts, and Gatekeeper's external data
// provider protocol (POST /gatekeeper/v1/<function>). Like the NATS
// front, it is a thin adapter: every answer is the resolver's.
package httpfront

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// Resolver answers requests; *resolve.Resolver implements it.
type Resolver interface {
	Answer(ctx context.Context, req resolve.Request) (resolve.Answer, error)
}

// Handler serves the HTTP APIs. Create it with New.
type Handler struct {
	res      Resolver
	timeout  time.Duration
	maxKeys  int
	mux      *http.ServeMux
	observer resolve.Observer
}

// Option configures a Handler.
type Option func(*Handler)

// WithTimeout bounds a Gatekeeper batch (default 2 s): keys still
// unresolved then get an item error; their fetches finish in the
// background and fill the cache.
func WithTimeout(d time.Duration) Option { return func(h *Handler) { h.timeout = d } }

// WithMaxKeys bounds the keys of one Gatekeeper request (default 1024).
func WithMaxKeys(n int) Option { return func(h *Handler) { h.maxKeys = max(n, 1) } }

// WithObserver is told the outcome of every answer, for metrics.
func WithObserver(o resolve.Observer) Option { return func(h *Handler) { h.observer = o } }

type nopObserver struct{}

func (nopObserver) Request(contract.Function, int, contract.Outcome, time.Duration) {}

// maxBody bounds a request body.
const maxBody = 1 << 20

// New returns a Handler answering with res.
func New(res Resolver, opts ...Option) *Handler {
	h := &Handler{res: res, timeout: 2 * time.Second, maxKeys: 1024, observer: nopObserver{}}
	for _, o := range opts {
		o(h)
	}
	h.mux = http.NewServeMux()
	h.mux.HandleFunc("GET /v1/{function}", h.plain)
	h.mux.HandleFunc("POST /v1/{function}", h.plain)
	h.mux.HandleFunc("POST /gatekeeper/v1/{function}", h.gatekeeper)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func function(name string) (contract.Function, bool) {
	return contract.ParseOperation("v1/" + name)
}

// plain answers GET /v1/<function>?image=<ref>[&platform=os/arch] and
// POST /v1/<function> with the waPC payload (a JSON string) as the body:
// the NATS reply's bytes on success, the contract code and
// {"code","message"} on error.
func (h *Handler) plain(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	fn, ok := function(r.PathValue("function"))
	if !ok {
		writeError(w, contract.Errorf(404, "no function %q: want manifest_digest, oci_manifest or oci_manifest_config", r.PathValue("function")))
		return
	}
	req := resolve.Request{Function: fn, Platform: r.Header.Get(contract.HeaderPlatform)}
	if p := r.URL.Query().Get("platform"); p != "" {
		req.Platform = p
	}
	if r.Method == http.MethodGet {
		image := r.URL.Query().Get("image")
		req.Payload, _ = json.Marshal(image)
	} else {
		// Never read whole: one byte past the limit tells.
		body, _ := io.ReadAll(io.LimitReader(r.Body, contract.MaxPayload+1))
		if len(body) > contract.MaxPayload {
			writeError(w, contract.Errorf(400, "payload over the %d-byte limit", contract.MaxPayload))
			h.observer.Request(fn, 400, "", time.Since(start))
			return
		}
		req.Payload = body
	}
	a, err := h.res.Answer(r.Context(), req)
	if err != nil {
		ce := contract.AsError(err)
		h.observer.Request(fn, ce.Code, "", time.Since(start))
		writeError(w, ce)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(contract.HeaderCache, string(a.Outcome))
	if a.Outcome == contract.Stale {
		w.Header().Set(contract.HeaderAge, strconv.Itoa(int(a.Age.Seconds())))
	}
	_, _ = w.Write(a.Body)
	h.observer.Request(fn, 0, a.Outcome, time.Since(start))
}

func writeError(w http.ResponseWriter, ce *contract.Error) {
	w.Header().Set("Content-Type", "application/json")
	if ce.RetryAfter != "" {
		w.Header().Set(contract.HeaderRetryAfter, ce.RetryAfter)
	}
	w.WriteHeader(ce.Code)
	_ = json.NewEncoder(w).Encode(ce)
}

// Gatekeeper's external data protocol, externaldata.gatekeeper.sh/v1beta1.
const (
	gkAPIVersion = "externaldata.gatekeeper.sh/v1beta1"
	gkRequest    = "ProviderRequest"
	gkResponse   = "ProviderResponse"
)

type providerRequest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    struct {
		Keys []string `json:"keys"`
	} `json:"request"`
}

type item struct {
	Key   string `json:"key"`
	Value any    `json:"value,omitempty"`
	Error string `json:"error,omitempty"`
}

type providerResponse struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		Idempotent  bool   `json:"idempotent"`
		Items       []item `json:"items"`
		SystemError string `json:"systemError,omitempty"`
	} `json:"response"`
}

// gatekeeper answers POST /gatekeeper/v1/<function|pin> with a
// ProviderResponse: HTTP 200 whenever the body could be read, one item
// per distinct key in request order, a key's failure in its item.
func (h *Handler) gatekeeper(w http.ResponseWriter, r *http.Request) {
	var resp providerResponse
	resp.APIVersion, resp.Kind, resp.Response.Idempotent = gkAPIVersion, gkResponse, true
	reply := func() {
		if resp.Response.Items == nil {
			resp.Response.Items = []item{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	}
	name := r.PathValue("function")
	pin := name == "pin"
	fn, ok := function(name)
	if pin {
		fn, ok = contract.ManifestDigest, true
	}
	if !ok {
		resp.Response.SystemError = fmt.Sprintf("no function %q: want manifest_digest, oci_manifest, oci_manifest_config or pin", name)
		reply()
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		resp.Response.SystemError = fmt.Sprintf("request body over %d bytes", maxBody)
		reply()
		return
	}
	var pr providerRequest
	switch {
	case json.Unmarshal(body, &pr) != nil:
		resp.Response.SystemError = "request is not a JSON ProviderRequest"
	case pr.APIVersion != gkAPIVersion || pr.Kind != gkRequest:
		resp.Response.SystemError = fmt.Sprintf("want kind %s of %s, got %q of %q", gkRequest, gkAPIVersion, pr.Kind, pr.APIVersion)
	case len(pr.Request.Keys) > h.maxKeys:
		resp.Response.SystemError = fmt.Sprintf("%d keys, over the %d-key limit (--http-max-keys)", len(pr.Request.Keys), h.maxKeys)
	}
	if resp.Response.SystemError != "" {
		reply()
		return
	}
	keys := distinct(pr.Request.Keys)
	resp.Response.Items = h.resolveKeys(r.Context(), fn, pin, keys, r.Header.Get(contract.HeaderPlatform))
	reply()
}

// resolveKeys resolves keys at once, each through the resolver (dedup,
// the shared cache, the fleet lock), and returns their items in order.
// Keys unresolved when the timeout ends get an item error; their fetches
// go on and fill the cache.
func (h *Handler) resolveKeys(ctx context.Context, fn contract.Function, pin bool, keys []string, platform string) []item {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	items := make([]item, len(keys))
	var mu sync.Mutex
	done := make(chan struct{}, len(keys))
	for i, k := range keys {
		items[i] = item{Key: k, Error: fmt.Sprintf("504: not resolved within %s (--http-timeout); the fetch goes on and fills the cache, retry", h.timeout)}
		go func() {
			defer func() { done <- struct{}{} }()
			start := time.Now()
			payload, _ := json.Marshal(k)
			a, err := h.res.Answer(ctx, resolve.Request{Function: fn, Payload: payload, Platform: platform})
			it := item{Key: k}
			if err != nil {
				ce := contract.AsError(err)
				it.Error = fmt.Sprintf("%d: %s", ce.Code, ce.Message)
				h.observer.Request(fn, ce.Code, "", time.Since(start))
			} else {
				it.Value, it.Error = value(fn, pin, k, a.Body)
				h.observer.Request(fn, 0, a.Outcome, time.Since(start))
			}
			if ctx.Err() == nil || err == nil {
				mu.Lock()
				items[i] = it
				mu.Unlock()
			}
		}()
	}
	for range keys {
		select {
		case <-done:
		case <-ctx.Done():
			mu.Lock()
			out := append([]item(nil), items...)
			mu.Unlock()
			return out
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]item(nil), items...)
}

// value is an item's value: the digest string, the reply object, or for
// pin the key rewritten to <repository as written>@<digest>.
func value(fn contract.Function, pin bool, key string, body []byte) (any, string) {
	if fn != contract.ManifestDigest {
		return json.RawMessage(body), ""
	}
	var d struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, "502: " + err.Error()
	}
	if !pin {
		return d.Digest, ""
	}
	repo := key
	if i := strings.IndexByte(repo, '@'); i >= 0 {
		// Already pinned: verified by the lookup, which asked for it.
		return key, ""
	}
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	return repo + "@" + d.Digest, ""
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
