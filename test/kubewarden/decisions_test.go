// Package kubewarden runs a policy written with Kubewarden's Go SDK
// (./policy, built with GOOS=wasip1 during the test) in client/wasihost and
// through `requester run`, its kubewarden/oci host calls answered by a
// regcap fleet, and checks its decisions against what the registry itself
// says.
package kubewarden

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// policyCase is one admission request and what the policy must decide,
// from the registry's truth.
type policyCase struct {
	name     string
	request  json.RawMessage
	settings string
	accepted bool
	// message is the exact message; prefix, when set, its start.
	message, prefix string
	// mutated are the images of the mutated Pod (nil: no mutation).
	mutated []string
}

// cases are the policy cases, their expectations computed from the
// registry's truth.
func cases(im images) []policyCase {
	root := func(tr truth) string {
		return fmt.Sprintf("%s: runs as root (user %q, manifest %s, %s)", tr.Ref, tr.User, tr.Resolved, tr.shape())
	}
	return []policyCase{
		{
			name:     "pins tags to digests",
			request:  pod([]string{im.Pinned.Ref}, im.NonRoot.Ref, im.Private.Ref),
			settings: `{"pin_tags":true}`,
			accepted: true,
			mutated:  []string{im.Pinned.Ref, im.NonRoot.Repo + "@" + im.NonRoot.Digest, im.Private.Repo + "@" + im.Private.Digest},
		},
		{
			name:     "accepts without pinning",
			request:  pod(nil, im.NonRoot.Ref, im.Private.Ref),
			accepted: true,
		},
		{
			name:    "rejects root users",
			request: pod(nil, im.NonRoot.Ref, im.Root.Ref, im.RootName.Ref),
			message: root(im.Root) + "; " + root(im.RootName),
		},
		{
			name:     "resolves an index to the fleet's platform",
			request:  pod(nil, im.Index.Ref),
			settings: `{"pin_tags":true}`,
			message:  root(im.Index),
		},
		{
			name:    "rejects a missing image through the SDK's error path",
			request: pod(nil, im.NonRoot.Ref, im.Missing),
			prefix:  im.Missing + ": manifest_digest: error 404: ",
		},
		{
			name:     "accepts a Pod with no images without asking the fleet",
			request:  pod(nil),
			settings: `{"pin_tags":true}`,
			accepted: true,
		},
	}
}

// check compares a response with the case.
func (c policyCase) check(t *testing.T, via string, r response) {
	t.Helper()
	msg := ""
	if r.Message != nil {
		msg = *r.Message
	}
	if r.Accepted != c.accepted {
		t.Errorf("%s: accepted %v, want %v (message %q)", via, r.Accepted, c.accepted, msg)
	}
	switch {
	case c.prefix != "" && !strings.HasPrefix(msg, c.prefix):
		t.Errorf("%s: message\n %q\nwant it to start with\n %q", via, msg, c.prefix)
	case c.prefix == "" && msg != c.message:
		t.Errorf("%s: message\n %q\nwant\n %q", via, msg, c.message)
	}
	if !c.accepted && (r.Code == nil || *r.Code != 403) {
		t.Errorf("%s: code %v, want 403", via, r.Code)
	}
	if got := r.mutatedImages(t); !reflect.DeepEqual(got, c.mutated) {
		t.Errorf("%s: mutated images %q, want %q", via, got, c.mutated)
	}
}

// TestPolicyDecisions runs the SDK-built policy on each case in
// client/wasihost and through the `requester run` binary, against a
// fleet of two workers with Redis, a public registry and a private one
// behind token auth, and checks that both decide what the registry's
// truth says they must.
func TestPolicyDecisions(t *testing.T) {
	testenv.Long(t, "builds a WASI policy and the requester")
	f := startFleet(t, worker.Config{})
	im := f.pushImages(t)
	requester := testenv.BuildCommand(t, "requester")
	wasm := policyFile(t)
	cacheDir := t.TempDir() // the requester's compiled policy, shared by the runs
	dir := t.TempDir()
	p := compile(t, f.host(t))

	for i, c := range cases(im) {
		t.Run(c.name, func(t *testing.T) {
			var settings json.RawMessage
			if c.settings != "" {
				settings = json.RawMessage(c.settings)
			}
			out, err := p.Validate(context.Background(), validationRequest(c.request, settings))
			testenv.Must(t, err, "validate in wasihost")
			var viaHost response
			testenv.Must(t, json.Unmarshal(out, &viaHost), "decoding %s", out)
			c.check(t, "wasihost", viaHost)

			// requester run takes an AdmissionReview, as kwctl run does.
			review := filepath.Join(dir, fmt.Sprintf("review-%d.json", i))
			testenv.Must(t, os.WriteFile(review, []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":`+string(c.request)+`}`), 0o600), "writing the review")
			args := []string{"run", wasm, "--request-path", review, "--nats-url", f.NATSURL, "--cache-dir", cacheDir}
			if c.settings != "" {
				args = append(args, "--settings-json", c.settings)
			}
			cmd := exec.Command(requester, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("requester run: %v\nstderr: %s", err, stderr.String())
			}
			var viaCLI response
			testenv.Must(t, json.Unmarshal(stdout.Bytes(), &viaCLI), "decoding requester run's %s", stdout.String())
			c.check(t, "requester run", viaCLI)
			if msg := *orEmpty(viaHost.Message); msg != *orEmpty(viaCLI.Message) {
				t.Errorf("wasihost said %q, requester run %q", msg, *orEmpty(viaCLI.Message))
			}
			t.Logf("decided: accepted=%v message=%q mutated=%q", viaHost.Accepted, *orEmpty(viaHost.Message), viaHost.mutatedImages(t))
		})
	}

	// The private registry was reached with the fleet's credentials,
	// through its token endpoint.
	if f.Private.Exchanges.Load() == 0 {
		t.Errorf("the private registry's token endpoint was never asked")
	}

	t.Run("settings", func(t *testing.T) {
		for _, tc := range []struct {
			settings, want string
		}{
			{`{"pin_tags":true}`, `{"valid":true}`},
			{`{}`, `{"valid":true}`},
			{`{"pin_tags":"yes"}`, `{"valid":false,"message":"invalid settings: json: cannot unmarshal string into Go struct field Settings.pin_tags of type bool"}`},
			{`{"pin":true}`, `{"valid":false,"message":"invalid settings: json: unknown field \"pin\""}`},
		} {
			out, err := p.ValidateSettings(context.Background(), []byte(tc.settings))
			testenv.Must(t, err, "validate-settings %s", tc.settings)
			if string(out) != tc.want {
				t.Errorf("settings %s: %s, want %s", tc.settings, out, tc.want)
			}
			// requester run --validate-settings: the same, indented.
			cmd := exec.Command(requester, "run", wasm, "--validate-settings", "--settings-json", tc.settings, "--nats-url", f.NATSURL, "--cache-dir", cacheDir, "-o", "json")
			got, err := cmd.Output()
			testenv.Must(t, err, "requester run --validate-settings %s", tc.settings)
			var a, b any
			_ = json.Unmarshal(got, &a)
			_ = json.Unmarshal(out, &b)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("requester run --validate-settings %s: %s, want %s", tc.settings, got, out)
			}
		}
	})
}

func orEmpty(s *string) *string {
	if s == nil {
		return new(string)
	}
	return s
}
