package httpfront_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
)

const digestBody = `{"digest":"sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"}`

// do sends one request and returns the status, headers and body.
func do(t testing.TB, url, method, body string, header http.Header) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

type providerResponse struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		Idempotent  bool              `json:"idempotent"`
		Items       []json.RawMessage `json:"items"`
		SystemError string            `json:"systemError"`
	} `json:"response"`
}

type gkItem struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
	Error string          `json:"error"`
}

func (pr providerResponse) items(t testing.TB) []gkItem {
	t.Helper()
	out := make([]gkItem, len(pr.Response.Items))
	for i, raw := range pr.Response.Items {
		if err := json.Unmarshal(raw, &out[i]); err != nil {
			t.Fatalf("item %d: %v: %s", i, err, raw)
		}
	}
	return out
}

// gk posts body to /gatekeeper/v1/<fn>; the reply must be an idempotent
// ProviderResponse with HTTP 200 and an items array.
func gk(t testing.TB, url, fn, body string, header http.Header) providerResponse {
	t.Helper()
	code, _, reply := do(t, url+"/gatekeeper/v1/"+fn, "POST", body, header)
	var pr providerResponse
	if code != 200 {
		t.Fatalf("gatekeeper %s: HTTP %d %s, want 200", fn, code, reply)
	}
	if err := json.Unmarshal([]byte(reply), &pr); err != nil {
		t.Fatalf("not JSON: %v: %.300s", err, reply)
	}
	if pr.APIVersion != "externaldata.gatekeeper.sh/v1beta1" || pr.Kind != "ProviderResponse" || !pr.Response.Idempotent ||
		!strings.Contains(reply, `"items":[`) {
		t.Fatalf("not an idempotent ProviderResponse with items: %.300s", reply)
	}
	return pr
}

func keys(ks ...string) string {
	b, _ := json.Marshal(map[string]any{"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest", "request": map[string]any{"keys": ks}})
	return string(b)
}

func numbered(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return ks
}

type observerFunc func(contract.Function, int, contract.Outcome, time.Duration)

func (f observerFunc) Request(fn contract.Function, code int, o contract.Outcome, d time.Duration) {
	f(fn, code, o, d)
}
