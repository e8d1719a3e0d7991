package main

import (
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/testworker"

	"github.com/regcap/regcap/internal/testenv"
)

// TestSingleRequests runs `requester digest|manifest|config` against a
// real worker: the reply body and a newline on stdout and exit 0; an
// error reply as "error <code>: <message>" on stderr and exit 1; no
// responders exit 3.
func TestSingleRequests(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	idx := reg.PushMultiPlatform(t, "app", "v1", testenv.OCIIndex)
	image := reg.Ref("app", "v1")
	url := ns.ClientURL()

	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"digest", []string{"digest", image, "--nats-url", url}, 0, `{"digest":"` + idx.Digest + `"}` + "\n", ""},
		{"flags first", []string{"digest", "--nats-url", url, image}, 0, `{"digest":"` + idx.Digest + `"}` + "\n", ""},
		{"manifest", []string{"manifest", image, "--nats-url=" + url}, 0, string(idx.Body) + "\n", ""},
		{"config arm64", []string{"config", image, "--platform", "linux/arm64", "--nats-url", url}, 0, string(testenv.ConfigReply(idx.Images[1])) + "\n", ""},
		{"unknown tag", []string{"digest", reg.Ref("app", "nope"), "--nats-url", url}, 1, "", "error 404: " + reg.Ref("app", "nope")},
		{"bad reference", []string{"manifest", "Not Valid", "--nats-url", url}, 1, "", "error 400: invalid image reference"},
		{"no platform match", []string{"config", image, "--platform", "windows/amd64", "--nats-url", url}, 1, "", "error 404: " + image + ": index has no manifest for windows/amd64"},
		{"no responders", []string{"digest", image, "--nats-url", url, "--subject-prefix", "nobody"}, 3, "", "no worker subscribed to nobody.oci.v1.manifest_digest"},
		{"no image", []string{"digest", "--nats-url", url}, 2, "", "want exactly one IMAGE"},
		{"unknown command", []string{"pull", image}, 2, "", `unknown command "pull" (see requester --help)`},
		{"unknown flag", []string{"digest", image, "--nope"}, 2, "", "requester digest: --nope: unknown flag (see requester digest --help)"},
		{"help", []string{"digest", "--help"}, 0, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := cli(t, "", tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.code, stderr)
			}
			if tc.name == "help" {
				if !strings.Contains(stdout, "Usage: requester digest") || stderr != "" {
					t.Fatalf("--help: stdout %q, stderr %q: want the usage on stdout", stdout, stderr)
				}
				return
			}
			if strings.Count(stderr, "\n") > 1 {
				t.Fatalf("stderr is not one line: %q", stderr)
			}
			if stdout != tc.stdout {
				t.Fatalf("stdout differs:\n got: %q\nwant: %q", stdout, tc.stdout)
			}
			if !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("stderr %q lacks %q", stderr, tc.stderr)
			}
		})
	}

	// -o json: one document on stdout, the reply with how it was
	// answered, or the error, with the same exit codes.
	code, stdout, _ := cli(t, "", "digest", image, "--nats-url", url, "-o", "json")
	var doc struct {
		Image, Function, Cache string
		Seconds                float64
		Reply                  struct{ Digest string }
		Error                  *struct {
			Code    int
			Message string
		}
	}
	decodeOne(t, stdout, &doc)
	if code != 0 || doc.Reply.Digest != idx.Digest || doc.Cache != "hit" || doc.Function != "v1/manifest_digest" || doc.Error != nil {
		t.Fatalf("-o json: exit %d, %+v", code, doc)
	}
	code, stdout, _ = cli(t, "", "digest", reg.Ref("app", "nope"), "--nats-url", url, "-o", "json")
	doc.Error = nil
	decodeOne(t, stdout, &doc)
	if code != 1 || doc.Error == nil || doc.Error.Code != 404 {
		t.Fatalf("-o json error: exit %d, %s", code, stdout)
	}

	// NATS not reachable at all.
	code, _, stderr := cli(t, "", "digest", image, "--nats-url", "nats://127.0.0.1:1", "--timeout", "1s")
	if code != 3 || !strings.Contains(stderr, "connecting to NATS") {
		t.Fatalf("unreachable NATS: exit %d, %s", code, stderr)
	}
}
