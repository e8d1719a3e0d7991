package httpfront_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// TestGatekeeperItems: one item per distinct key, in request order, with
// its value (the digest string, the reply object byte for byte, the
// pinned reference) or its "<code>: <message>" error.
func TestGatekeeperItems(t *testing.T) {
	const d = "sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"
	manifest := "{ \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\" }"
	res := newStub().
		answer("a", digestBody, contract.Miss).
		answer("b", digestBody, contract.Miss).
		answer("c", digestBody, contract.Miss).
		set("hot", stubAnswer{Answer: resolve.Answer{Body: []byte(digestBody), Outcome: contract.Hit}, memory: true}).
		answer("reg:5000/app:v1", digestBody, contract.Miss).
		answer("reg:5000/app", digestBody, contract.Miss).
		answer("app@"+d, digestBody, contract.Miss).
		answer("m", manifest, contract.Miss).
		answer("cfg", `{"manifest":{},"digest":"`+d+`","config":{}}`, contract.Miss).
		answer("no-digest", `{}`, contract.Miss).
		answer("not-json", `{"manifest":`, contract.Miss).
		fail("limited", &contract.Error{Code: 429, Message: "limited: rate limited; retry after 30s (Retry-After: 30)", RetryAfter: "30"}).
		fail("forged", contract.Errorf(42, "forged")).
		fail("bug", errors.New("boom")).
		fail("shutting", contract.Errorf(503, "shutting: worker shutting down"))
	_, srv := start(t, res)
	type want struct{ key, value, err string }
	digest := `"` + d + `"`
	for _, c := range []struct {
		name, fn string
		keys     []string
		header   http.Header
		want     []want
		platform string
	}{
		{name: "in request order, each repeated key once", fn: "manifest_digest", keys: []string{"b", "a", "c", "a", "b", "hot"},
			want: []want{{"b", digest, ""}, {"a", digest, ""}, {"c", digest, ""}, {"hot", digest, ""}}},
		{name: "no keys", fn: "manifest_digest", keys: []string{}},
		{name: "per-key errors", fn: "manifest_digest", keys: []string{"a", "nope", "Not Valid", "", "limited", "forged", "bug", "shutting"},
			want: []want{{"a", digest, ""}, {"nope", "", "404: nope: manifest unknown"}, {"Not Valid", "", "400: "}, {"", "", "400: "},
				{"limited", "", "429: limited: rate limited; retry after 30s (Retry-After: 30)"},
				{"forged", "", "500: internal error: code 42 outside the contract: forged"}, {"bug", "", "500: internal error: boom"},
				{"shutting", "", "503: shutting: worker shutting down"}}},
		{name: "pin", fn: "pin", keys: []string{"reg:5000/app:v1", "reg:5000/app", "app@" + d, "app:v9@" + d, "nope"},
			want: []want{{"reg:5000/app:v1", `"reg:5000/app@` + d + `"`, ""}, {"reg:5000/app", `"reg:5000/app@` + d + `"`, ""},
				{"app@" + d, `"app@` + d + `"`, ""}, {"app:v9@" + d, `"app:v9@` + d + `"`, ""}, {"nope", "", "404: "}}},
		{name: "oci_manifest, byte for byte", fn: "oci_manifest", keys: []string{"m"}, want: []want{{"m", manifest, ""}}},
		{name: "oci_manifest_config, Regcap-Platform", fn: "oci_manifest_config", keys: []string{"cfg"}, header: http.Header{"Regcap-Platform": {"linux/arm64"}},
			want: []want{{"cfg", `{"manifest":{},"digest":"` + d + `","config":{}}`, ""}}, platform: "linux/arm64"},
		{name: "a digest answer without a digest", fn: "manifest_digest", keys: []string{"no-digest", "a"},
			want: []want{{"no-digest", "", "500: internal error: the digest answer has no digest"}, {"a", digest, ""}}},
		{name: "an answer that is not JSON", fn: "oci_manifest", keys: []string{"not-json", "m"},
			want: []want{{"not-json", "", "500: internal error: the oci_manifest answer is not JSON"}, {"m", manifest, ""}}},
		{name: "keys as sent", fn: "manifest_digest", keys: []string{"<a>&\u2028é\"\\"}, want: []want{{"<a>&\u2028é\"\\", "", "404: "}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			items := gk(t, srv.URL, c.fn, keys(c.keys...), c.header).items(t)
			if len(items) != len(c.want) {
				t.Fatalf("%d items %+v, want %d", len(items), items, len(c.want))
			}
			for i, w := range c.want {
				it := items[i]
				if it.Key != w.key || string(it.Value) != w.value || !strings.HasPrefix(it.Error, w.err) || (w.err == "") != (it.Error == "") {
					t.Errorf("item %d: key %q value %s error %q; want key %q value %s error %q…", i, it.Key, it.Value, it.Error, w.key, w.value, w.err)
				}
			}
			if c.platform != "" && res.lastRequest().Platform != c.platform {
				t.Errorf("platform %q, want %q", res.lastRequest().Platform, c.platform)
			}
		})
	}
}
