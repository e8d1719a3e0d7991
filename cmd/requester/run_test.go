package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
)

var (
	guestOnce sync.Once
	guestPath string
	guestErr  error
)

// testGuest builds client/wasihost's raw-ABI test guest once per test
// binary and returns its path. (test/kubewarden runs a policy built with
// Kubewarden's SDK through `requester run`; this one can be told to trap,
// loop or write anything.)
func testGuest(t *testing.T) string {
	t.Helper()
	guestOnce.Do(func() {
		dir, err := os.MkdirTemp("", "requester-run-guest")
		if err != nil {
			guestErr = err
			return
		}
		guestPath = filepath.Join(dir, "guest.wasm")
		cmd := exec.Command("go", "build", "-o", guestPath, "../../client/wasihost/testdata/guest")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			guestErr = fmt.Errorf("building the test guest: %v\n%s", err, b)
		}
	})
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestPath
}

// TestRunPolicy runs `requester run` on a WASI policy against a real
// worker: the response on stdout (JSON by default, a line with -o text),
// the policy's host calls answered by the fleet, and an exit code for
// each way it can go wrong: 2 for bad usage or input, 3 for a fleet that
// cannot be reached (the response still printed when the policy ran), 4
// for a policy that does not compile, exits, loops or writes no response.
func TestRunPolicy(t *testing.T) {
	testenv.Long(t, "builds a WASI policy with the Go toolchain")
	guest := testGuest(t)
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	img := reg.PushImage(t, "app", "v1", testenv.OCIManifest, "linux/amd64")
	image := reg.Ref("app", "v1")
	url := ns.ClientURL()
	cacheDir := t.TempDir() // compiled once, for every case
	t.Setenv("XDG_CACHE_HOME", cacheDir)

	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		testenv.Must(t, os.WriteFile(p, []byte(content), 0o600), "writing %s", name)
		return p
	}
	request := `{"uid":"1","kind":{"group":"","version":"v1","kind":"Pod"},"object":{"kind":"Pod"}}`
	review := file("review.json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":`+request+`}`)
	bare := file("request.json", request)
	notJSON := file("bad.json", "kind: Pod\n")
	array := file("array.json", "[1,2]")
	noRequest := file("norequest.json", `{"apiVersion":"v1"}`)
	notWasm := file("policy.wasm", "\x00asm not really")
	// The guest, run with validate-settings, does what its settings say:
	// here, a host call to the fleet, then a settings response.
	digestCall := func(prefix string) []string {
		settings := fmt.Sprintf(`{"calls":[{"binding":"kubewarden","namespace":"oci","operation":"v1/manifest_digest","payload":%q}],"raw":"{\"valid\":true,\"message\":\"checked\"}"}`, `"`+image+`"`)
		return []string{"run", guest, "--validate-settings", "--settings-json", settings, "--nats-url", url, "--subject-prefix", prefix}
	}

	cases := []struct {
		name   string
		stdin  string
		args   []string
		code   int
		stdout string // exact, when set
		stderr string // a part of it
	}{
		{"admission review", "", []string{"run", guest, "--request-path", review, "--nats-url", url}, 0, "{\n  \"accepted\": true,\n  \"message\": \"validate\"\n}\n", ""},
		{"bare request on stdin", request, []string{"run", "--request-path", "-", guest, "--nats-url", url}, 0, "{\n  \"accepted\": true,\n  \"message\": \"validate\"\n}\n", ""},
		{"text", "", []string{"run", guest, "--request-path", bare, "-o", "text", "--nats-url", url}, 0, "accepted: validate\n", ""},
		{"text, long flag", "", []string{"run", guest, "--request-path", bare, "--output=text", "--nats-url", url}, 0, "accepted: validate\n", ""},
		{"host call answered by the fleet", "", digestCall("kubewarden"), 0, "{\n  \"valid\": true,\n  \"message\": \"checked\"\n}\n", ""},
		{"host call unanswered", "", digestCall("nobody"), 3, "{\n  \"valid\": true,\n  \"message\": \"checked\"\n}\n", "the policy decided without the fleet: kubewarden/oci/v1/manifest_digest: "},
		{"message as written", "", []string{"run", guest, "--validate-settings", "--settings-json", `{"raw":"{\"valid\":false,\"message\":\"<b> & c\"}"}`, "--nats-url", url}, 0, "{\n  \"valid\": false,\n  \"message\": \"<b> & c\"\n}\n", ""},
		{"invalid, as text", "", []string{"run", guest, "--validate-settings", "--settings-json", `{"raw":"{\"valid\":false,\"message\":\"no\"}"}`, "-o", "text", "--nats-url", url}, 0, "invalid: no\n", ""},
		{"not a settings response", "", []string{"run", guest, "--validate-settings", "--nats-url", url}, 4, "", `validate-settings: "{\"accepted\":true`},
		{"valid of the wrong type", "", []string{"run", guest, "--validate-settings", "--settings-json", `{"raw":"{\"valid\":\"yes\"}"}`, "--nats-url", url}, 4, "", "is not a settings validation response"},
		{"not JSON", "", []string{"run", guest, "--validate-settings", "--settings-json", `{"raw":"hello"}`, "--nats-url", url}, 4, "", "policy " + guest + " validate-settings: response is not JSON"},
		{"exits", "", []string{"run", guest, "--validate-settings", "--settings-json", `{"exit":3}`, "--nats-url", url}, 4, "", "policy " + guest + " validate-settings: exited with an error: exit code 3"},
		{"loops", "", []string{"run", guest, "--validate-settings", "--settings-json", `{"loop":true}`, "--policy-timeout", "300ms", "--nats-url", url}, 4, "", "timed out"},
		{"not wasm", "", []string{"run", notWasm, "--request-path", review, "--nats-url", url}, 4, "", "policy " + notWasm + ": does not compile"},
		{"no policy file", "", []string{"run", filepath.Join(dir, "none.wasm"), "--request-path", review}, 2, "", "none.wasm: no such file"},
		{"no policy", "", []string{"run", "--request-path", review}, 2, "", "want exactly one POLICY.wasm, got 0"},
		{"no request", "", []string{"run", guest}, 2, "", "--request-path is required"},
		{"request not JSON", "", []string{"run", guest, "--request-path", notJSON}, 2, "", "not a JSON object"},
		{"request an array", "", []string{"run", guest, "--request-path", array}, 2, "", "not a JSON object"},
		{"request neither", "", []string{"run", guest, "--request-path", noRequest}, 2, "", "neither an AdmissionReview"},
		{"request missing", "", []string{"run", guest, "--request-path", filepath.Join(dir, "nope.json")}, 2, "", "nope.json: no such file"},
		{"both settings", "", []string{"run", guest, "--request-path", review, "--settings-json", "{}", "--settings-path", review}, 2, "", "exclude each other"},
		{"settings not an object", "", []string{"run", guest, "--request-path", review, "--settings-json", "[]"}, 2, "", "--settings-json: not a JSON object"},
		{"both on stdin", "{}", []string{"run", guest, "--request-path", "-", "--settings-path", "-"}, 2, "", "cannot both be stdin"},
		{"fleet unreachable", "", []string{"run", guest, "--request-path", review, "--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", testenv.FreePort(t))}, 3, "", "connecting to NATS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := cli(t, tc.stdin, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			if tc.code == 0 && stderr != "" {
				t.Errorf("stderr %q, want nothing", stderr)
			}
			if tc.stdout != "" && stdout != tc.stdout {
				t.Errorf("stdout differs:\n got: %q\nwant: %q", stdout, tc.stdout)
			}
			if tc.code != 0 && tc.code != 3 && stdout != "" {
				t.Errorf("stdout %q on failure, want nothing", stdout)
			}
			if !strings.Contains(stderr, tc.stderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tc.stderr)
			}
			if strings.Count(stderr, "\n") > 1 {
				t.Errorf("stderr is not one line: %q", stderr)
			}
		})
	}
	// The fleet fetched the image for the host call: its digest is what
	// the worker asked the registry for.
	if n := reg.CountManifest("GET", "app", "v1") + reg.CountManifest("HEAD", "app", "v1"); n == 0 {
		t.Fatalf("the registry served no manifest of %s (%s): the host call did not reach the fleet", image, img.Digest)
	}
}

// TestRunHelp: --help documents run with an example.
func TestRunHelp(t *testing.T) {
	code, stdout, _ := cli(t, "", "run", "--help")
	if code != 0 || !strings.Contains(stdout, "Usage: requester run POLICY.wasm --request-path FILE") ||
		!strings.Contains(stdout, "Example:\n  requester run policy.wasm") || !strings.Contains(stdout, "--settings-json") {
		t.Fatalf("run --help: exit %d, stdout:\n%s", code, stdout)
	}
	code, stdout, _ = cli(t, "", "--help")
	if code != 0 || !strings.Contains(stdout, "run POLICY.wasm") {
		t.Fatalf("--help does not list run: exit %d\n%s", code, stdout)
	}
}

// TestAdmissionRequest: what --request-path accepts, as kwctl does.
func TestAdmissionRequest(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{`{"kind":"AdmissionReview","request":{"uid":"1"}}`, `{"uid":"1"}`, ""},
		{` {"uid":"1","object":{}} `, `{"uid":"1","object":{}}`, ""},
		{`{"object":{}}`, `{"object":{}}`, ""},
		{`{"request":"x"}`, "", `"request" is not an object`},
		{`{"request":null}`, "", `"request" is not an object`},
		{`{}`, "", "neither"},
		{`"x"`, "", "not a JSON object"},
		{``, "", "not a JSON object"},
		{`{"uid":`, "", "not a JSON object"},
	} {
		got, err := admissionRequest([]byte(tc.in))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: %v, want an error containing %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || string(got) != tc.want):
			t.Errorf("%q: %s, %v; want %s", tc.in, got, err, tc.want)
		case tc.err == "" && !json.Valid(got):
			t.Errorf("%q: %s is not JSON", tc.in, got)
		}
	}
}
