// Package discovery_test runs the real nats CLI (`nats micro ls`, `nats
// micro info regcap`) against worker binaries built the way `make build`
// and the Dockerfile build them, each stamped with the versions a build
// can carry, and checks that the CLI lists the worker with its version
// (issue 18: the CLI dropped a worker whose version was not a SemVer).
//
// The nats CLI is pinned and installed by scripts/install-test-deps.sh,
// which make test runs; without it this test fails, it never skips.
package discovery_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/internal/discovery"
	"github.com/regcap/regcap/internal/testenv"
)

// root is the module's root folder: the tests run in test/discovery.
var root = filepath.Join("..", "..")

// TestNATSCLIListsEveryBuild: for each way of building and each stamp,
// the CLI finds the worker and shows the stamp's SemVer.
func TestNATSCLIListsEveryBuild(t *testing.T) {
	testenv.Long(t, "builds worker binaries and runs the nats CLI")
	cli := natsCLI(t)
	stamps := []struct{ stamp, want string }{
		{"02d75a8", "0.0.0-dev+02d75a8"}, // make build on an untagged commit
		{"v1.2.3", "1.2.3"},
		{"v1.2.3-4-g02d75a8-dirty", "1.2.3+4.g02d75a8.dirty"},
	}
	builds := []struct {
		name  string
		build func(t *testing.T, stamp, dir string)
	}{
		{"make build", makeBuild},
		{"Dockerfile", dockerfileBuild},
	}
	for _, b := range builds {
		for _, s := range stamps {
			t.Run(b.name+"/"+s.stamp, func(t *testing.T) {
				dir := t.TempDir()
				b.build(t, s.stamp, dir)
				checkListed(t, cli, filepath.Join(dir, "worker"), s.stamp, s.want)
			})
		}
	}
	// What make build stamps in this very tree (git describe, or dev
	// without git): the case of issue 18 as a developer meets it.
	t.Run("make build/own stamp", func(t *testing.T) {
		dir := t.TempDir()
		cmd := makeCommand(t, "", dir)
		m := regexp.MustCompile(`-X main\.version=([^' ]*)`).FindStringSubmatch(cmd)
		if m == nil {
			t.Fatalf("make -n build: no -X main.version in %q", cmd)
		}
		run(t, exec.Command("sh", "-c", cmd), "make build's command")
		checkListed(t, cli, filepath.Join(dir, "worker"), m[1], discovery.SemVer(m[1]))
	})
}

// makeBuild runs make build's own command (from make -n, so that it is
// the Makefile's, flags and all) with VERSION=stamp, into dir instead of
// bin/.
func makeBuild(t *testing.T, stamp, dir string) {
	t.Helper()
	run(t, exec.Command("sh", "-c", makeCommand(t, stamp, dir)), "make build's command")
}

// makeCommand is the go build line of `make -n build`, with VERSION=stamp
// unless stamp is empty, writing into dir.
func makeCommand(t *testing.T, stamp, dir string) string {
	t.Helper()
	args := []string{"-n", "--no-print-directory", "build", "GO=go"}
	if stamp != "" {
		args = append(args, "VERSION="+stamp)
	}
	cmd := exec.Command("make", args...)
	// Without the flags of a make test running this test, which would
	// reach this make through MAKEFLAGS.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out := run(t, cmd, "make -n build")
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		// The command itself, not a line that only names it (an echo).
		if strings.HasPrefix(withoutAssignments(l), "go build ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || strings.Count(lines[0], " -o bin/ ") != 1 {
		t.Fatalf("make -n build: want one go build line writing to -o bin/, got:\n%s", out)
	}
	return strings.Replace(lines[0], " -o bin/ ", " -o "+shellQuote(dir+"/")+" ", 1)
}

// withoutAssignments is shell command line l without its leading
// VAR=value words.
func withoutAssignments(l string) string {
	l = strings.TrimSpace(l)
	for {
		word, rest, _ := strings.Cut(l, " ")
		if !regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(word) {
			return l
		}
		l = strings.TrimLeft(rest, " ")
	}
}

// dockerfileBuild runs the Dockerfile's go build step as its RUN would
// (sh -c, with the build argument VERSION in the environment), in the
// module root (the image's WORKDIR after COPY . .), into dir instead of
// /out/.
func dockerfileBuild(t *testing.T, stamp, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	testenv.Must(t, err, "reading the Dockerfile")
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	if !regexp.MustCompile(`(?m)^ARG VERSION\b`).MatchString(text) {
		t.Fatal("the Dockerfile has no ARG VERSION: the test does not know how it stamps the version")
	}
	var runs []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "RUN ") && strings.Contains(l, "go build") {
			// RUN's own flags (--mount=type=cache,…) are BuildKit's,
			// not the shell's.
			cmd := strings.TrimPrefix(l, "RUN ")
			for strings.HasPrefix(cmd, "--") {
				_, cmd, _ = strings.Cut(cmd, " ")
				cmd = strings.TrimLeft(cmd, " ")
			}
			runs = append(runs, cmd)
		}
	}
	if len(runs) != 1 || strings.Count(runs[0], " -o /out/ ") != 1 {
		t.Fatalf("Dockerfile: want one RUN go build writing to -o /out/, got %q", runs)
	}
	cmd := exec.Command("sh", "-c", strings.Replace(runs[0], " -o /out/ ", " -o "+shellQuote(dir+"/")+" ", 1))
	cmd.Env = append(os.Environ(), "VERSION="+stamp)
	run(t, cmd, "the Dockerfile's go build")
}

// checkListed starts the worker binary with its embedded NATS server and
// asks the nats CLI about it.
func checkListed(t *testing.T, cli, worker, stamp, want string) {
	t.Helper()
	if got := strings.TrimSpace(run(t, exec.Command(worker, "--version"), "worker --version")); got != "worker "+stamp {
		t.Fatalf("worker --version: %q, want %q: the build did not stamp the version", got, "worker "+stamp)
	}
	url := startWorker(t, worker)

	// nats micro ls: the table a person reads, then its JSON.
	ls := runCLI(t, cli, url, "micro", "ls")
	if !regexp.MustCompile(`(?m)\bregcap\s.*\s` + regexp.QuoteMeta(want) + `\s`).MatchString(ls) {
		t.Errorf("nats micro ls does not list regcap %s:\n%s", want, ls)
	}
	var listed []struct{ Name, ID, Version string }
	out := runCLI(t, cli, url, "micro", "ls", "--json")
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("nats micro ls --json: %v\n%s", err, out)
	}
	if len(listed) != 1 || listed[0].Name != discovery.Name || listed[0].Version != want || listed[0].ID == "" {
		t.Errorf("nats micro ls --json: %+v, want one regcap %s", listed, want)
	}

	// nats micro info regcap: the same, with the endpoints.
	info := runCLI(t, cli, url, "micro", "info", discovery.Name)
	if !regexp.MustCompile(`(?m)^\s*Version: ` + regexp.QuoteMeta(want) + `\s*$`).MatchString(info) {
		t.Errorf("nats micro info regcap does not show Version: %s:\n%s", want, info)
	}
	var detail struct {
		Info struct {
			Name, Version string
			Endpoints     []struct{ Name, Subject string }
		}
		Stats struct{ Version string }
	}
	out = runCLI(t, cli, url, "micro", "info", discovery.Name, "--json")
	if err := json.Unmarshal([]byte(out), &detail); err != nil {
		t.Fatalf("nats micro info --json: %v\n%s", err, out)
	}
	if detail.Info.Name != discovery.Name || detail.Info.Version != want || detail.Stats.Version != want || len(detail.Info.Endpoints) != 3 {
		t.Errorf("nats micro info --json: %+v, want regcap %s with 3 endpoints", detail, want)
	}
}

// startWorker runs the worker binary with its embedded NATS server on a
// free loopback port, no metrics listener and none of this process's
// regcap or NATS variables, until the test ends, and returns the NATS URL
// once the worker answers discovery.
func startWorker(t *testing.T, worker string) string {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	cmd := exec.Command(worker, "--embedded-nats-addr", addr, "--metrics-addr", "")
	cmd.Env = cleanEnv()
	var logs testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	testenv.Must(t, cmd.Start(), "starting the worker")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("worker output:\n%s", logs.String())
		}
	})
	url := "nats://" + addr
	testenv.Eventually(t, "the worker to answer $SRV.PING.regcap", func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the worker exited: %v\n%s", err, logs.String())
		default:
		}
		nc, err := nats.Connect(url, nats.Timeout(time.Second))
		if err != nil {
			return false
		}
		defer nc.Close()
		_, err = nc.Request("$SRV.PING."+discovery.Name, nil, time.Second)
		return err == nil
	})
	return url
}

// runCLI runs the nats CLI against url, with a home of its own (no saved
// contexts) and none of this process's NATS variables (NOVALIDATE would
// turn off the check that issue 18 is about).
func runCLI(t *testing.T, cli, url string, args ...string) string {
	t.Helper()
	cmd := exec.Command(cli, append([]string{"--server", url, "--timeout", "5s"}, args...)...)
	home := t.TempDir()
	cmd.Env = append(cleanEnv(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
	return run(t, cmd, "nats "+strings.Join(args, " "))
}

// cleanEnv is this process's environment less what would change how the
// worker or the CLI runs.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NATS_") || strings.HasPrefix(k, "REGCAP_") ||
			k == "REDIS_URL" || k == "NOVALIDATE" || k == "HOME" || k == "XDG_CONFIG_HOME" || k == "DOCKER_CONFIG" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// natsCLI finds the nats CLI at the version scripts/install-test-deps.sh
// pins: in the Go bin folder, where the script installs it, or on PATH.
func natsCLI(t *testing.T) string {
	t.Helper()
	script := filepath.Join(root, "scripts", "install-test-deps.sh")
	b, err := os.ReadFile(script)
	testenv.Must(t, err, "reading %s", script)
	m := regexp.MustCompile(`(?m)^NATSCLI_VERSION=(v\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s pins no NATSCLI_VERSION", script)
	}
	pin := string(m[1])
	var candidates []string
	if gobin := goEnv(t, "GOBIN"); gobin != "" {
		candidates = append(candidates, filepath.Join(gobin, "nats"))
	}
	candidates = append(candidates, filepath.Join(goEnv(t, "GOPATH"), "bin", "nats"))
	if p, err := exec.LookPath("nats"); err == nil {
		candidates = append(candidates, p)
	}
	var found []string
	for _, c := range candidates {
		out, err := exec.Command(c, "--version").Output()
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			found = append(found, fmt.Sprintf("%s (%v)", c, err))
		case strings.TrimSpace(string(out)) == pin:
			return c
		default:
			found = append(found, fmt.Sprintf("%s (%s)", c, strings.TrimSpace(string(out))))
		}
	}
	t.Fatalf("the nats CLI %s is not installed (found: %v): run scripts/install-test-deps.sh (make test runs it), which installs github.com/nats-io/natscli/nats@%s", pin, found, pin)
	return ""
}

func goEnv(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimSpace(run(t, exec.Command("go", "env", name), "go env "+name))
}

// run runs cmd in the module root and returns its standard output,
// failing the test with both outputs if it fails.
func run(t *testing.T, cmd *exec.Cmd, what string) string {
	t.Helper()
	if cmd.Dir == "" {
		cmd.Dir = root
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", what, err, out, stderr.String())
	}
	return string(out)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
