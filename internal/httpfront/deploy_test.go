package httpfront_test

import (
	"bytes"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/regcap/regcap/contract"
)

// TestDeployManifests keeps deploy/ true to the HTTP APIs: every document
// is a named Kubernetes object, and every URL a Provider or a Kyverno
// apiCall names is a path this front serves, for a function that exists.
func TestDeployManifests(t *testing.T) {
	files, err := filepath.Glob("../../deploy/*/*.yaml")
	if err != nil || len(files) < 5 {
		t.Fatalf("deploy manifests: %v %v", files, err)
	}
	urls := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for {
			var doc map[string]any
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			meta, _ := doc["metadata"].(map[string]any)
			if doc["apiVersion"] == nil || doc["kind"] == nil || meta["name"] == nil {
				t.Errorf("%s: a document without apiVersion, kind or metadata.name", f)
			}
			for _, u := range findURLs(doc) {
				urls++
				p, err := url.Parse(strings.SplitN(u, "?", 2)[0])
				if err != nil || p.Scheme != "https" {
					t.Errorf("%s: %q is not an https URL", f, u)
					continue
				}
				name, ok := strings.CutPrefix(p.Path, "/gatekeeper/v1/")
				if !ok {
					name, ok = strings.CutPrefix(p.Path, "/v1/")
				}
				if _, fn := contract.ParseOperation("v1/" + name); !ok || (!fn && name != "pin") {
					t.Errorf("%s: %q is not a path the HTTP front serves", f, u)
				}
			}
		}
	}
	if urls < 3 {
		t.Errorf("found %d URLs in deploy/, want the providers' and Kyverno's", urls)
	}
}

// findURLs returns every value of a "url" key in v.
func findURLs(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && k == "url" {
				out = append(out, s)
			} else {
				out = append(out, findURLs(val)...)
			}
		}
	case []any:
		for _, val := range x {
			out = append(out, findURLs(val)...)
		}
	}
	return out
}
