package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/testworker"

	"github.com/regcap/regcap/internal/prefetch"
	"github.com/regcap/regcap/internal/testenv"
)

// cli runs the requester as main does, with stdin, and returns its exit
// code and outputs.
func cli(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// cliAsync runs the requester with ctx in the background, its outputs
// readable while it runs; the channel gets the exit code.
func cliAsync(ctx context.Context, args ...string) (<-chan int, *testenv.SyncBuffer, *testenv.SyncBuffer) {
	var out, errb testenv.SyncBuffer
	code := make(chan int, 1)
	go func() { code <- run(ctx, args, strings.NewReader(""), &out, &errb) }()
	return code, &out, &errb
}

type prefetchJSON struct {
	Images      int            `json:"images"`
	Functions   []string       `json:"functions"`
	Shared      int            `json:"shared"`
	Stale       int            `json:"stale"`
	Retries     int            `json:"retries"`
	Interrupted bool           `json:"interrupted"`
	Total       int            `json:"total"`
	OK          int            `json:"ok"`
	Failed      int            `json:"failed"`
	Skipped     int            `json:"skipped"`
	Hits        int            `json:"hits"`
	Fetched     int            `json:"fetched"`
	ByCode      map[string]int `json:"by_code"`
	Rate        *float64       `json:"rate_per_second"`
	Seconds     *float64       `json:"elapsed_seconds"`
	Failures    []struct {
		Reference string `json:"reference"`
		Function  string `json:"function"`
		Code      int    `json:"code"`
		Message   string `json:"message"`
		Attempts  int    `json:"attempts"`
	} `json:"failures"`
}

func decodeOne(t *testing.T, s string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, s)
	}
	if dec.More() {
		t.Fatalf("stdout holds more than one JSON document:\n%s", s)
	}
}

func TestPrefetchCLI(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	url := ns.ClientURL()
	reg.PushImage(t, "app/web", "v1", testenv.OCIManifest, "linux/amd64")
	reg.PushImage(t, "app/api", "v2", testenv.DockerManifest, "linux/amd64")
	web, api := reg.Ref("app/web", "v1"), reg.Ref("app/api", "v2")

	dir := t.TempDir()
	good := filepath.Join(dir, "good.txt")
	testenv.Must(t, os.WriteFile(good, []byte("# rollout\n"+web+"\n\n"+api+"  # api\n"+web+"\n"), 0o644), "writing list")
	k8s := "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      initContainers:\n      - image: " + api +
		"\n      containers:\n      - image: " + web + "\n---\nkind: Service\n"

	t.Run("all ok, json", func(t *testing.T) {
		code, out, errs := cli(t, "", "prefetch", "-f", good, "--nats-url", url, "-o", "json", "--progress", "lines")
		if code != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", code, errs)
		}
		var r prefetchJSON
		decodeOne(t, out, &r)
		if r.Images != 2 || r.Total != 6 || r.OK != 6 || r.Failed != 0 || len(r.Failures) != 0 || r.Rate == nil || r.Seconds == nil {
			t.Fatalf("report: %+v", r)
		}
	})

	t.Run("now all hits, text", func(t *testing.T) {
		code, out, errs := cli(t, "", "prefetch", "--nats-url", url, "--functions", "digest,config", web, api)
		if code != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", code, errs)
		}
		for _, want := range []string{"2 images × 2 functions = 4 requests", "ok       4 (cache hit 4, fetched 0, shared 0)", "failed   0"} {
			if !strings.Contains(out, want) {
				t.Errorf("summary lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("k8s yaml from stdin", func(t *testing.T) {
		code, out, errs := cli(t, k8s, "prefetch", "--from-k8s-yaml", "-", "--functions", "manifest", "--nats-url", url, "-o", "json")
		if code != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", code, errs)
		}
		var r prefetchJSON
		decodeOne(t, out, &r)
		if r.Images != 2 || r.OK != 2 {
			t.Fatalf("report: %+v", r)
		}
	})

	t.Run("missing and bad references fail with codes, exit 1", func(t *testing.T) {
		list := web + "\n" + reg.Ref("app/web", "nope") + "\n" + reg.Ref("gone/repo", "v1") + "\nNot/A Reference\n"
		code, out, errs := cli(t, list, "prefetch", "-f", "-", "--functions", "digest", "--nats-url", url, "-o", "json")
		if code != exitFailed {
			t.Fatalf("exit %d, want 1; stderr:\n%s", code, errs)
		}
		var r prefetchJSON
		decodeOne(t, out, &r)
		if r.Total != 4 || r.OK != 1 || r.Failed != 3 || r.ByCode["404"] != 2 || r.ByCode["400"] != 1 || len(r.ByCode) != 2 {
			t.Fatalf("report: %+v", r)
		}
		for _, f := range r.Failures {
			if f.Reference == "" || f.Function != "v1/manifest_digest" || f.Code == 0 || f.Message == "" {
				t.Fatalf("failure lacks detail: %+v", f)
			}
		}
		// The text form lists the failures too.
		_, text, _ := cli(t, list, "prefetch", "-f", "-", "--functions", "digest", "--nats-url", url)
		if !strings.Contains(text, "failed   3 (400: 1, 404: 2)") || !strings.Contains(text, "404 manifest_digest "+reg.Ref("gone/repo", "v1")) {
			t.Fatalf("text summary:\n%s", text)
		}
	})

	t.Run("bad usage exits 2", func(t *testing.T) {
		for _, args := range [][]string{
			{"prefetch", "--nats-url", url},
			{"prefetch", "--functions", "digest,size", "--nats-url", url, web},
			{"prefetch", "-f", filepath.Join(dir, "absent.txt"), "--nats-url", url},
			{"prefetch", "-f", "-", "--from-k8s-yaml", "-", "--nats-url", url},
			{"prefetch", "--progress", "sometimes", "--nats-url", url, web},
			{"prefetch", "--concurrency", "0", "--nats-url", url, web},
		} {
			if code, _, _ := cli(t, "", args...); code != exitUsage {
				t.Errorf("%q: exit %d, want 2", args, code)
			}
		}
		// A ticker of no interval panicked.
		for _, iv := range []string{"0", "0s", "-1s"} {
			code, _, errs := cli(t, "", "prefetch", "--progress", "lines", "--progress-interval", iv, "--nats-url", url, web)
			if code != exitUsage || !strings.Contains(errs, "--progress-interval") || !strings.Contains(errs, "positive") {
				t.Errorf("--progress-interval %s: exit %d, want 2 with a usage error; stderr:\n%s", iv, code, errs)
			}
		}
	})

	t.Run("help", func(t *testing.T) {
		// The usage goes to stdout, so that `requester prefetch --help | less` shows it.
		code, usage, stderr := cli(t, "", "prefetch", "--help")
		if code != exitOK || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		for _, want := range []string{"\n  -f string\n", "\n  -o FORMAT\n", "\n  --output FORMAT\n", "\n  --from-k8s-yaml string\n", "\n  --progress-interval duration\n"} {
			if !strings.Contains(usage, want) {
				t.Errorf("help lacks %q:\n%s", want, usage)
			}
		}
		if strings.Contains(usage, "--f ") || strings.Contains(usage, "--o ") {
			t.Errorf("help lists one-letter flags with two dashes:\n%s", usage)
		}
		// Every kind the extraction reads is named in --from-k8s-yaml's help.
		i := strings.Index(usage, "\n  --from-k8s-yaml string\n")
		if i < 0 {
			t.Fatalf("no --from-k8s-yaml in the help:\n%s", usage)
		}
		help := usage[i : i+strings.Index(usage[i:], "env REQUESTER_")]
		for _, kind := range prefetch.Kinds() {
			if !strings.Contains(help, kind+",") && !strings.Contains(help, kind+" ") {
				t.Errorf("--from-k8s-yaml help does not name %s:\n%s", kind, help)
			}
		}
	})
}

// TestPrefetchCLIUnreachable: a NATS server without workers, and no NATS
// server at all, both exit 3.
func TestPrefetchCLIUnreachable(t *testing.T) {
	ns := testenv.StartNATS(t, testenv.MaxPayload(1<<20)) // nats-server's default
	code, out, errs := cli(t, "", "prefetch", "--nats-url", ns.ClientURL(), "--retries", "1", "--timeout", "2s", "-o", "json", "busybox", "nginx")
	if code != exitUnreachable {
		t.Fatalf("no workers: exit %d, want 3; stderr:\n%s", code, errs)
	}
	var r prefetchJSON
	decodeOne(t, out, &r)
	if r.Failed != 6 || r.ByCode["unreachable"] != 6 {
		t.Fatalf("report: %+v", r)
	}
	if !strings.Contains(errs, "no worker answered") {
		t.Fatalf("stderr does not say why:\n%s", errs)
	}

	// A request the fleet would refuse (a reference over the 4 KiB
	// payload limit, and over NATS's max_payload) is a failure, not a sign
	// that the fleet is down: refused before sending with the fleet's 400,
	// exit 1.
	huge := strings.Repeat("a", 2<<20)
	code, out, errs = cli(t, "", "prefetch", "--nats-url", ns.ClientURL(), "--retries", "0", "--functions", "digest", "-o", "json", "busybox", huge)
	if code != exitFailed || strings.Contains(errs, "no worker answered") {
		t.Fatalf("unsendable request: exit %d, want 1; stderr:\n%s", code, errs)
	}
	r = prefetchJSON{}
	decodeOne(t, out, &r)
	if r.Failed != 2 || r.ByCode["unreachable"] != 1 || r.ByCode["400"] != 1 {
		t.Fatalf("report: %+v", r)
	}
	for _, f := range r.Failures {
		if f.Reference == huge && (f.Code != 400 || f.Attempts != 0 || !strings.Contains(f.Message, "over the 4096-byte limit")) {
			t.Fatalf("failure of the huge reference: code %d, %d attempts, message %q", f.Code, f.Attempts, f.Message)
		}
	}

	port := testenv.FreePort(t)
	if code, _, errs := cli(t, "", "prefetch", "--nats-url", "nats://127.0.0.1:"+strconv.Itoa(port), "--timeout", "1s", "busybox"); code != exitUnreachable {
		t.Fatalf("no NATS: exit %d, want 3; stderr:\n%s", code, errs)
	}
}

// TestPrefetchCLIHeld runs prefetches while the registry holds a fetch:
// progress lines are printed meanwhile, and a cancelled run (Ctrl-C) still
// prints its summary and exits 1.
func TestPrefetchCLIHeld(t *testing.T) {
	ns := testenv.StartNATS(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	// Started after the worker, so that its cleanup (which releases held
	// requests) runs before the worker's shutdown.
	reg := testenv.StartRegistry(t)
	url := ns.ClientURL()

	t.Run("progress lines on a non-terminal", func(t *testing.T) {
		reg.PushImage(t, "lines/app", "v1", testenv.OCIManifest, "linux/amd64")
		gate := reg.Hold("/lines/app/")
		defer gate.Release()
		code, out, errs := cliAsync(context.Background(), "prefetch", "--progress", "lines", "--progress-interval", "10ms",
			"--functions", "digest", "--nats-url", url, reg.Ref("lines/app", "v1"))
		testenv.Eventually(t, "a progress line", func() bool { return strings.Contains(errs.String(), "prefetch: 0/1 done, 0 failed") })
		gate.Release()
		if c := <-code; c != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", c, errs.String())
		}
		if !strings.Contains(out.String(), "1 image × 1 function = 1 request") || !strings.Contains(out.String(), "ok       1 ") {
			t.Fatalf("summary:\n%s", out.String())
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		reg.PushImage(t, "ctrl-c/app", "v1", testenv.OCIManifest, "linux/amd64")
		gate := reg.Hold("/ctrl-c/app/")
		defer gate.Release()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		code, out, errs := cliAsync(ctx, "prefetch", "--progress", "none", "--functions", "digest", "--nats-url", url, reg.Ref("ctrl-c/app", "v1"))
		<-gate.Arrived()
		cancel()
		if c := <-code; c != exitFailed {
			t.Fatalf("exit %d, want 1; stderr:\n%s", c, errs.String())
		}
		for _, want := range []string{"1 image × 1 function = 1 request", "interrupted: 0 done, 1 skipped", "failed   0"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("summary lacks %q:\n%s", want, out.String())
			}
		}
	})
}
