package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
)

// oneJSON decodes stdout as exactly one JSON document.
func oneJSON(t *testing.T, stdout string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(stdout))
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("stdout is not one JSON document: %v\n%q", err, stdout)
	}
	if dec.More() {
		t.Fatalf("stdout holds more than one JSON document:\n%s", stdout)
	}
	return v
}

// TestExitCodesAndJSONAlways: 0 answered, 1 an error reply, 2 bad usage,
// 3 unreachable; with -o json stdout is one JSON document in every case.
func TestExitCodesAndJSONAlways(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	reg.PushImage(t, "app", "v1", testenv.OCIManifest, "linux/amd64")
	url, image, dead := ns.ClientURL(), reg.Ref("app", "v1"), "nats://127.0.0.1:1"
	cases := []struct {
		name  string
		args  []string
		code  int
		field string // the field of "error" that says what kind, "" for none
	}{
		{"answered", []string{"digest", image, "--nats-url", url}, 0, ""},
		{"answered, --output", []string{"digest", image, "--nats-url", url, "--output=json"}, 0, ""},
		{"error reply", []string{"digest", reg.Ref("app", "nope"), "--nats-url", url}, 1, "code"},
		{"refused locally", []string{"digest", "BusyBox", "--nats-url", dead}, 1, "code"},
		{"unknown flag", []string{"digest", image, "--bogus"}, 2, "usage"},
		{"bad duration", []string{"digest", image, "--timeout=abc"}, 2, "usage"},
		{"negative timeout", []string{"digest", image, "--timeout=-1s", "--nats-url", dead}, 2, "usage"},
		{"no image", []string{"manifest", "--nats-url", url}, 2, "usage"},
		{"unknown command", []string{"pull", image}, 2, "usage"},
		{"bad prefetch flag", []string{"prefetch", image, "--concurrency", "0"}, 2, "usage"},
		{"bad bench flag", []string{"bench", image, "--function", "size"}, 2, "usage"},
		{"NATS unreachable", []string{"digest", image, "--nats-url", dead, "--timeout", "1s"}, 3, "unreachable"},
		{"NATS unreachable, prefetch", []string{"prefetch", image, "--nats-url", dead, "--timeout", "1s"}, 3, "unreachable"},
		{"NATS unreachable, bench", []string{"bench", image, "--nats-url", dead, "--timeout", "1s"}, 3, "unreachable"},
		{"no responders", []string{"config", image, "--nats-url", url, "--subject-prefix", "nobody"}, 3, "unreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if !strings.Contains(strings.Join(args, " "), "--output") {
				args = append(args, "-o", "json")
			}
			code, stdout, stderr := cli(t, "", args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			doc := oneJSON(t, stdout)
			e, _ := doc["error"].(map[string]any)
			switch {
			case tc.field == "" && e != nil:
				t.Fatalf("an error in a success: %s", stdout)
			case tc.field != "" && (e == nil || e[tc.field] == nil || e["message"] == ""):
				t.Fatalf("want an error with %q and a message:\n%s", tc.field, stdout)
			}
		})
	}
}

// TestReferencesCheckedLocally: a reference the worker would refuse is
// refused before anything is sent, with the worker's own words and the
// same shape as the fleet's 400 (exit 1, the same JSON); prefetch sends
// none of its requests.
func TestReferencesCheckedLocally(t *testing.T) {
	ns := testenv.StartNATS(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	nc := testenv.Connect(t, ns.ClientURL())
	fleet := client.New(nc)
	for _, c := range []struct{ ref, words string }{
		{"BusyBox", `repository path component "BusyBox" must be lower case`},
		{"localhost:99999/app:v1", `registry port "99999" is not a number from 1 to 65535`},
		{"localhost:5000/a//b:v1", `repository path component "" is empty`},
	} {
		// The fleet's answer, asked directly.
		_, err := fleet.Image(context.Background(), contract.ManifestDigest, c.ref)
		var ce *contract.Error
		if !errors.As(err, &ce) || ce.Code != 400 || !strings.Contains(ce.Message, c.words) {
			t.Fatalf("%s: the fleet answered %v, want a 400 saying %q", c.ref, err, c.words)
		}
		// The requester's, with no NATS at all: refused before connecting.
		code, stdout, stderr := cli(t, "", "digest", c.ref, "--nats-url", "nats://127.0.0.1:1")
		if code != 1 || stdout != "" || strings.TrimSpace(stderr) != "error 400: "+ce.Message {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", c.ref, code, stderr, "error 400: "+ce.Message)
		}
		code, stdout, _ = cli(t, "", "digest", c.ref, "--nats-url", "nats://127.0.0.1:1", "-o", "json")
		e, _ := oneJSON(t, stdout)["error"].(map[string]any)
		if code != 1 || e == nil || e["code"] != float64(400) || e["message"] != ce.Message {
			t.Errorf("%s -o json: exit %d, %s", c.ref, code, stdout)
		}
	}

	// prefetch on a server with no worker: a request sent would be
	// unreachable (exit 3); refused locally, each is a 400, never sent.
	bare := testenv.StartNATS(t)
	code, stdout, stderr := cli(t, "", "prefetch", "BusyBox", "--nats-url", bare.ClientURL(), "--timeout", "1s", "-o", "json")
	var r prefetchJSON
	decodeOne(t, stdout, &r)
	if code != exitFailed || r.Failed != 3 || r.ByCode["400"] != 3 || len(r.ByCode) != 1 {
		t.Fatalf("exit %d, report %+v; stderr %s", code, r, stderr)
	}
	for _, f := range r.Failures {
		if f.Attempts != 0 || !strings.Contains(f.Message, "must be lower case") {
			t.Errorf("failure %+v: want 0 attempts and the words", f)
		}
	}
}

// TestFlagErrorsAsWritten: a bad flag is named as it was written, with
// the form wanted, and every problem is said at once.
func TestFlagErrorsAsWritten(t *testing.T) {
	code, stdout, stderr := cli(t, "", "digest", "busybox", "--bogus", "--timeout=abc", "-attempt-timeout", "-1s", "-o", "yaml")
	want := []string{
		"requester digest: --bogus: unknown flag (see requester digest --help)",
		`requester digest: --timeout: want a duration such as 30s, got "abc" (see requester digest --help)`,
		`requester digest: -o: want text or json (got "yaml") (see requester digest --help)`,
		"requester digest: --attempt-timeout: want a duration of 0 (never retry) or more, got -1s (see requester digest --help)",
	}
	if code != exitUsage || stdout != "" || strings.TrimSpace(stderr) != strings.Join(want, "\n") {
		t.Fatalf("exit %d, stderr:\n%s\nwant 2 and:\n%s", code, stderr, strings.Join(want, "\n"))
	}
	code, _, stderr = cli(t, "", "digest", "busybox", "--timeout=-1s")
	if code != exitUsage || !strings.Contains(stderr, "--timeout: want a positive duration such as 30s, got -1s") || strings.Contains(stderr, "NATS") {
		t.Fatalf("--timeout=-1s: exit %d, stderr %s", code, stderr)
	}
}

// TestVersionAndHelp: --version anywhere, version and completion listed,
// every command's help has examples and the exit codes.
func TestVersionAndHelp(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"digest", "busybox", "--version"}, {"prefetch", "--bogus", "-version"}} {
		if code, stdout, stderr := cli(t, "", args...); code != 0 || stdout != "requester dev\n" || stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	_, usage, _ := cli(t, "", "--help")
	for _, want := range []string{"\n  version ", "\n  completion SHELL", "Exit codes:", "3  the fleet could not be reached", "Examples:"} {
		if !strings.Contains(usage, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	for _, cmd := range []string{"digest", "manifest", "config", "prefetch", "bench", "completion"} {
		code, help, _ := cli(t, "", cmd, "--help")
		if code != 0 || !strings.Contains(help, "Examples:\n  requester "+cmd) && !strings.Contains(help, "Examples:\n  source <(requester") {
			t.Errorf("%s --help has no examples:\n%s", cmd, help)
		}
		if cmd != "completion" && !strings.Contains(help, "3 the fleet unreachable") {
			t.Errorf("%s --help does not give the exit codes", cmd)
		}
	}
	if code, help, _ := cli(t, "", "help", "prefetch"); code != 0 || !strings.Contains(help, "Usage: requester prefetch") {
		t.Errorf("help prefetch: %d\n%s", code, help)
	}
}

// TestCompletionScripts: each shell's script is valid for that shell
// and names every command and a command's flags.
func TestCompletionScripts(t *testing.T) {
	for _, sh := range []struct{ shell, check string }{{"bash", "bash"}, {"zsh", "zsh"}, {"fish", "fish"}} {
		t.Run(sh.shell, func(t *testing.T) {
			code, script, stderr := cli(t, "", "completion", sh.shell)
			if code != 0 || stderr != "" {
				t.Fatalf("exit %d, stderr %s", code, stderr)
			}
			for _, want := range []string{"digest", "prefetch", "bench", "completion", "from-k8s-yaml", "subject-prefix"} {
				if !strings.Contains(script, want) {
					t.Errorf("script lacks %q", want)
				}
			}
			bin, err := exec.LookPath(sh.check)
			if err != nil {
				if sh.shell == "bash" {
					t.Fatal("bash not found")
				}
				t.Skipf("%s not installed (scripts/install-test-deps.sh installs it)", sh.shell)
			}
			f := filepath.Join(t.TempDir(), "requester."+sh.shell)
			testenv.Must(t, os.WriteFile(f, []byte(script), 0o644), "write")
			if out, err := exec.Command(bin, "-n", f).CombinedOutput(); err != nil {
				t.Fatalf("%s -n: %v\n%s", sh.check, err, out)
			}
		})
	}
	code, _, stderr := cli(t, "", "completion", "tcsh")
	if code != exitUsage || !strings.Contains(stderr, `unknown shell "tcsh": want bash, zsh or fish`) {
		t.Fatalf("tcsh: exit %d, %s", code, stderr)
	}
}

// TestBashCompletionCompletes: the bash script completes a command and
// a flag.
func TestBashCompletionCompletes(t *testing.T) {
	_, script, _ := cli(t, "", "completion", "bash")
	run := func(line string) string {
		words := strings.Fields(line)
		cmd := exec.Command("bash", "-c", script+`
COMP_WORDS=(`+line+`); COMP_CWORD=`+string(rune('0'+len(words)-1))+`; _requester; echo "${COMPREPLY[@]}"`)
		out, err := cmd.CombinedOutput()
		testenv.Must(t, err, "bash: %s", out)
		return strings.TrimSpace(string(out))
	}
	if got := run("requester pre"); got != "prefetch" {
		t.Errorf("requester pre<TAB>: %q", got)
	}
	if got := run("requester prefetch --from-k8s"); got != "--from-k8s-yaml" {
		t.Errorf("requester prefetch --from-k8s<TAB>: %q", got)
	}
	if got := run("requester digest busybox -o j"); got != "json" {
		t.Errorf("-o j<TAB>: %q", got)
	}
}
