package httpfront

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/regcap/regcap/contract"
)

// values turns an answer's body into its items' values, as JSON: the
// reply object itself (oci_manifest, oci_manifest_config; written as
// is, never copied), the digest string, or for pin the key rewritten to
// <repository as written>@<digest>. Only pin's differ between the keys
// that share the answer.
func values(fn contract.Function, pin bool, body []byte) (func(key string) []byte, *contract.Error) {
	if fn != contract.ManifestDigest {
		// The resolver answers only JSON: anything else here is a bug,
		// and would break the whole reply if written.
		if !json.Valid(body) {
			return nil, contract.Errorf(contract.CodeInternal, "internal error: the %s answer is not JSON", fn.Name())
		}
		return func(string) []byte { return body }, nil
	}
	var d struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(body, &d); err != nil || d.Digest == "" {
		return nil, contract.Errorf(contract.CodeInternal, "internal error: the digest answer has no digest: %q", contract.Bound(string(body)))
	}
	if !pin {
		digest := jsonString(d.Digest)
		return func(string) []byte { return digest }, nil
	}
	return func(key string) []byte { return jsonString(pinned(key, d.Digest)) }, nil
}

// pinned is key rewritten to <repository as written>@<digest>; a key
// already pinned comes back unchanged (the lookup asked for, and so
// verified, its digest).
func pinned(key, digest string) string {
	if strings.IndexByte(key, '@') >= 0 {
		return key
	}
	repo := key
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	return repo + "@" + digest
}

// jsonString encodes s as a JSON string, without the HTML escapes that
// would make a key of '<' six times longer in the reply than in the
// request.
func jsonString(s string) []byte {
	if !strings.ContainsAny(s, "<>&") {
		b, _ := json.Marshal(s) // pooled: cheaper than an Encoder
		return b
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
