package httpfront_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/httpfront"
)

// TestGatekeeperSystemError: a request that cannot be taken gets HTTP 200,
// a systemError and no items, and resolves nothing.
func TestGatekeeperSystemError(t *testing.T) {
	res := newStub()
	_, srv := start(t, res, httpfront.WithMaxKeys(3))
	for _, c := range []struct{ name, fn, body, want string }{
		{"not JSON", "manifest_digest", "{", "request is not a JSON ProviderRequest"},
		{"not an object", "manifest_digest", `["a"]`, "request is not a JSON ProviderRequest"},
		{"keys not strings", "manifest_digest", `{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":[1]}}`, "not a JSON ProviderRequest"},
		{"wrong kind", "manifest_digest", `{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"Other","request":{"keys":["a"]}}`, `want kind ProviderRequest of externaldata.gatekeeper.sh/v1beta1, got "Other"`},
		{"wrong apiVersion", "manifest_digest", `{"apiVersion":"v2","kind":"ProviderRequest","request":{"keys":["a"]}}`, `got "ProviderRequest" of "v2"`},
		{"one key over --http-max-keys", "manifest_digest", keys("a", "b", "c", "d"), "4 keys, over the 3-key limit (--http-max-keys)"},
		{"repeats count too", "manifest_digest", keys("a", "a", "a", "a"), "4 keys, over the 3-key limit"},
		{"body over 1 MiB", "manifest_digest", keys(strings.Repeat("a", 1<<20)), "request body over 1048576 bytes"},
		{"unknown function", "pull", keys("a"), `no function "pull"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			pr := gk(t, srv.URL, c.fn, c.body, nil)
			if !strings.Contains(pr.Response.SystemError, c.want) || len(pr.Response.Items) != 0 {
				t.Errorf("%+v, want systemError %q and no items", pr.Response, c.want)
			}
		})
	}
	if n := res.resolutions("manifest_digest:a"); n != 0 {
		t.Errorf("%d resolutions for requests refused whole, want 0", n)
	}
	if code, _, _ := do(t, srv.URL+"/gatekeeper/v1/manifest_digest", "GET", "", nil); code != 405 {
		t.Errorf("GET: %d, want 405", code)
	}
}

// TestGatekeeperMaxKeys: exactly --http-max-keys keys are answered, one
// more is a systemError.
func TestGatekeeperMaxKeys(t *testing.T) {
	for _, max := range []int{1, 5, httpfront.DefaultMaxKeys} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			var opts []httpfront.Option
			if max != httpfront.DefaultMaxKeys {
				opts = append(opts, httpfront.WithMaxKeys(max))
			}
			_, srv := start(t, newStub(), opts...)
			pr := gk(t, srv.URL, "manifest_digest", keys(numbered("app:", max)...), nil)
			items := pr.items(t)
			if pr.Response.SystemError != "" || len(items) != max {
				t.Fatalf("%d keys: %d items, systemError %q; want every key answered", max, len(items), pr.Response.SystemError)
			}
			for i, it := range items {
				if it.Key != fmt.Sprintf("app:%d", i) || !strings.HasPrefix(it.Error, "404: ") {
					t.Fatalf("item %d: %+v", i, it)
				}
			}
			pr = gk(t, srv.URL, "manifest_digest", keys(numbered("app:", max+1)...), nil)
			if want := fmt.Sprintf("%d keys, over the %d-key limit", max+1, max); !strings.Contains(pr.Response.SystemError, want) || len(pr.Response.Items) != 0 {
				t.Errorf("%d keys: %+v, want systemError %q", max+1, pr.Response, want)
			}
		})
	}
}
