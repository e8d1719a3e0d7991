package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestSIGTERMAnswersRequestsInFlight runs the worker as a process: a
// request whose fetch is held at the registry when SIGTERM arrives still
// gets its reply, new requests find no responder once the subscriptions
// are drained, and the process exits 0.
func TestSIGTERMAnswersRequestsInFlight(t *testing.T) {
	h := startHeld(t)
	testenv.Must(t, h.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")

	// Drained: the subjects have no responder any more, while the fetch
	// taken before SIGTERM is still held.
	testenv.Eventually(t, "the subscriptions to drain", func() bool {
		_, err := h.nc.Request(contract.OCIManifest.Subject("kubewarden"), []byte(`"x"`), 2*time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
	select {
	case err := <-h.exited:
		t.Fatalf("worker exited with a request in flight: %v", err)
	default:
	}
	h.gate.Release()

	select {
	case r := <-h.reply:
		if !bytes.Equal(r.Body, h.img.Manifest) {
			t.Fatalf("reply after SIGTERM: %s", r.Body)
		}
	case err := <-h.replyErr:
		t.Fatalf("request in flight at SIGTERM failed: %v", err)
	}
	if err := <-h.exited; err != nil {
		t.Fatalf("worker exit: %v", err)
	}
}

// TestShutdownTimeoutExit3: when --shutdown-timeout runs out with a
// request in flight, the request is answered 503 and the worker exits 3,
// saying how many it cancelled.
func TestShutdownTimeoutExit3(t *testing.T) {
	h := startHeld(t, "--shutdown-timeout", "1s")
	defer h.gate.Release()
	testenv.Must(t, h.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	select {
	case r := <-h.reply:
		t.Fatalf("a held request was answered: %s", r.Body)
	case err := <-h.replyErr:
		var ce *contract.Error
		if !errors.As(err, &ce) || ce.Code != 503 {
			t.Fatalf("held request: %v, want 503", err)
		}
	}
	err := <-h.exited
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("exit %v, want code 3\n%s", err, h.stderr.String())
	}
	if !strings.Contains(h.stderr.String(), `"cancelled": 1`) {
		t.Errorf("stderr does not say what was cancelled:\n%s", h.stderr.String())
	}
}

// held is a worker process with one request whose fetch is held at the
// registry.
type held struct {
	cmd      *exec.Cmd
	exited   chan error
	stderr   *testenv.SyncBuffer
	nc       *nats.Conn
	gate     *testenv.Gate
	img      testenv.Image
	reply    chan *client.Reply
	replyErr chan error
}

// startHeld runs the worker binary with args, waits until it serves, and
// sends one request whose manifest GET the registry holds.
func startHeld(t *testing.T, args ...string) *held {
	t.Helper()
	bin := testenv.BuildCommand(t, "worker")
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	h := &held{exited: make(chan error, 1), stderr: &testenv.SyncBuffer{},
		reply: make(chan *client.Reply, 1), replyErr: make(chan error, 1)}
	h.img = reg.PushImage(t, "inflight", "v1", testenv.OCIManifest, "linux/amd64")
	h.gate = reg.Hold("/inflight/manifests/")

	h.cmd = exec.Command(bin, append([]string{"--nats-url", ns.ClientURL(), "--metrics-addr", "", "--log-format", "console"}, args...)...)
	h.cmd.Env = append(os.Environ(), "REDIS_URL=")
	h.cmd.Stderr = h.stderr
	testenv.Must(t, h.cmd.Start(), "starting worker")
	go func() { h.exited <- h.cmd.Wait() }()
	t.Cleanup(func() {
		_ = h.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("worker stderr:\n%s", h.stderr.String())
		}
	})

	h.nc = testenv.Connect(t, ns.ClientURL())
	cli := client.New(h.nc, client.WithTimeout(30*time.Second))
	// Subscribed once a bad request is answered with its 400.
	testenv.Eventually(t, "the worker to subscribe", func() bool {
		for _, fn := range contract.Functions() {
			_, err := cli.Call(context.Background(), fn, []byte(`""`))
			var ce *contract.Error
			if !errors.As(err, &ce) || ce.Code != 400 {
				return false
			}
		}
		return true
	})
	if !strings.Contains(h.stderr.String(), "NATS connected") {
		t.Errorf("the worker did not say it connected to NATS:\n%s", h.stderr.String())
	}
	go func() {
		r, err := cli.Image(context.Background(), contract.OCIManifest, reg.Ref("inflight", "v1"))
		if err != nil {
			h.replyErr <- err
			return
		}
		h.reply <- r
	}()
	select {
	case <-h.gate.Arrived():
	case err := <-h.replyErr:
		t.Fatalf("request failed before reaching the registry: %v", err)
	}
	return h
}

// TestHelpListsEveryFlagWithItsVariable checks `worker --help` and that
// the environment sets flags.
func TestHelpListsEveryFlagWithItsVariable(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errs); code != 0 || errs.Len() != 0 {
		t.Fatalf("--help exit %d, stderr %q: want 0 and the usage on stdout", code, errs.String())
	}
	for _, want := range []string{"--nats-url", "env NATS_URL", "--redis-url", "env REDIS_URL", "--cache-ttl", "env REGCAP_CACHE_TTL", "--fetch-timeout", "--concurrency", "--max-pending", "--metrics-addr", "--subject-prefix", "--queue-group", "--platform", "--log-format", "--memory-cache-size"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}

	t.Setenv("REGCAP_CACHE_TTL", "90s")
	t.Setenv("REGCAP_CONCURRENCY", "7")
	cfg, err := worker.ParseFlags([]string{"--concurrency", "9"}, &out)
	testenv.Must(t, err, "parse")
	if cfg.CacheTTL != 90*time.Second {
		t.Errorf("REGCAP_CACHE_TTL ignored: %v", cfg.CacheTTL)
	}
	if cfg.Concurrency != 9 {
		t.Errorf("a flag on the command line must win over the environment: %d", cfg.Concurrency)
	}

	t.Setenv("REGCAP_FETCH_TIMEOUT", "soon")
	if _, err := worker.ParseFlags(nil, &out); err == nil || !strings.Contains(err.Error(), "REGCAP_FETCH_TIMEOUT") {
		t.Errorf("a bad variable must be named in the error, got %v", err)
	}
}

// TestBadFlagsExit2: a bad command line is one line on stderr that says
// what is wrong and points at --help, not the whole usage; exit 2.
func TestBadFlagsExit2(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"--log-format", "xml"}, {"--platform", "linux"}, {"extra"}, {"--redis-url", "127.0.0.1:6379"}} {
		var out, errs bytes.Buffer
		code := run(context.Background(), append(args, "--metrics-addr", ""), &out, &errs)
		lines := strings.Split(strings.TrimSpace(errs.String()), "\n")
		if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "see worker --help") || out.Len() != 0 {
			t.Errorf("%v: exit %d, stderr %q, stdout %q: want 2 and one line pointing at --help", args, code, errs.String(), out.String())
		}
	}
}

// TestStartupErrorsAreOneLine: a worker that cannot start says why in one
// line on stderr, with no stack trace or caller, and exits 1; every port
// taken is named in that line, not one per attempt.
func TestStartupErrorsAreOneLine(t *testing.T) {
	taken := testenv.ListenCounting(t, "127.0.0.1:0")
	taken2 := testenv.ListenCounting(t, "127.0.0.1:0")
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"embedded NATS port taken", []string{"--embedded-nats-addr", taken.Addr()}, taken.Addr() + " (--embedded-nats-addr) already in use: another worker or server is running on this host; stop it, or set --embedded-nats-addr to free addresses"},
		{"metrics port taken", []string{"--nats-url", "nats://127.0.0.1:1", "--metrics-addr", taken.Addr()}, taken.Addr() + " (--metrics-addr) already in use"},
		{"a second worker", []string{"--embedded-nats-addr", taken.Addr(), "--metrics-addr", taken2.Addr()}, taken.Addr() + " (--embedded-nats-addr), " + taken2.Addr() + " (--metrics-addr) already in use"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, format := range []string{"json", "console"} {
				var out, errs bytes.Buffer
				args := append([]string{"--log-level", "error", "--log-format", format}, c.args...)
				if !strings.Contains(strings.Join(args, " "), "--metrics-addr") {
					args = append(args, "--metrics-addr", "")
				}
				code := run(context.Background(), args, &out, &errs)
				lines := strings.Split(strings.TrimSpace(errs.String()), "\n")
				if code != 1 || len(lines) != 1 || !strings.Contains(lines[0], c.want) || strings.Contains(errs.String(), "goroutine") || strings.Contains(errs.String(), ".go:") {
					t.Errorf("%s: exit %d, stderr:\n%s\nwant 1 and one line containing %q", format, code, errs.String(), c.want)
				}
				if format == "json" && !json.Valid([]byte(lines[0])) {
					t.Errorf("the fatal line is not in the log's encoding (JSON): %s", lines[0])
				}
			}
		})
	}
	if taken.Accepted() != 0 || taken2.Accepted() != 0 {
		t.Errorf("the worker connected to the taken ports")
	}
}

// TestBadSettingsExit2BeforeAnythingStarts runs the worker binary with
// several bad flags and a port conflict: every bad setting is one line,
// in the log's encoding, and the exit is 2; the port conflict is not
// reached, nothing listens and nothing is dialled (Redis and NATS are
// counting listeners).
func TestBadSettingsExit2BeforeAnythingStarts(t *testing.T) {
	bin := testenv.BuildCommand(t, "worker")
	taken := testenv.ListenCounting(t, "127.0.0.1:0")
	redis := testenv.ListenCounting(t, "127.0.0.1:0")
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	missing := t.TempDir() + "/missing.pem"
	for _, c := range []struct {
		name  string
		extra []string
	}{
		{"embedded NATS", []string{"--embedded-nats-addr", taken.Addr()}},
		{"external NATS", []string{"--nats-url", "nats://" + taken.Addr()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{
				"--log-format", "json",
				"--metrics-addr", metrics,
				"--redis-url", "redis://" + redis.Addr(),
				"--http-addr", ":8443", // without TLS
				"--cache-ttl", "abc",
				"--bogus",
				"--sources", missing,
				"--concurrency", "-2",
			}, c.extra...)
			cmd := exec.Command(bin, args...)
			cmd.Env = append(os.Environ(), "REGCAP_FETCH_TIMEOUT=soon")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want 2\n%s", err, stderr.String())
			}
			want := []string{
				`--cache-ttl: want a duration such as 30s, got \"abc\"`,
				"--bogus: unknown flag",
				`environment variable REGCAP_FETCH_TIMEOUT: want a duration such as 30s, got \"soon\"`,
				"--concurrency: want 0 or more",
				"--http-addr: needs --tls-cert and --tls-key",
				"--sources: sources file: open " + missing,
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if len(lines) != len(want) || stdout.Len() != 0 {
				t.Fatalf("%d lines on stderr, want %d, one per problem:\n%s", len(lines), len(want), stderr.String())
			}
			for i, w := range want {
				if !json.Valid([]byte(lines[i])) || !strings.Contains(lines[i], w) || !strings.Contains(lines[i], `"level":"error"`) {
					t.Errorf("line %d: %s\nwant a JSON error line containing %s", i, lines[i], w)
				}
			}
			if redis.Accepted() != 0 || taken.Accepted() != 0 {
				t.Errorf("the worker dialled: redis %d, NATS %d connections", redis.Accepted(), taken.Accepted())
			}
			// Nothing was listened on: the metrics port is still free.
			ln, err := net.Listen("tcp", metrics)
			testenv.Must(t, err, "the metrics port is not free after the worker exited")
			_ = ln.Close()
		})
	}
}

// TestSIGTERMWithoutNATS: a worker that never reached NATS still stops
// cleanly and at once; it has taken nothing, so there is nothing to flush.
func TestSIGTERMWithoutNATS(t *testing.T) {
	bin := testenv.BuildCommand(t, "worker")
	var stderr testenv.SyncBuffer
	cmd := exec.Command(bin, "--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", testenv.FreePort(t)), "--metrics-addr", "", "--shutdown-timeout", "60s")
	cmd.Env = append(os.Environ(), "REDIS_URL=")
	cmd.Stderr = &stderr
	testenv.Must(t, cmd.Start(), "starting worker")
	testenv.Eventually(t, "the worker to start", func() bool { return strings.Contains(stderr.String(), "worker started") })
	// It says that NATS is unreachable, at start and not once per retry.
	if n := strings.Count(stderr.String(), "NATS not reachable at start-up"); n != 1 {
		t.Errorf("start-up warning logged %d times, want once:\n%s", n, stderr.String())
	}
	time.Sleep(time.Second) // several reconnect attempts
	if n := strings.Count(stderr.String(), "NATS still unreachable"); n > 1 {
		t.Errorf("%d retry warnings in a second, want at most one every 5 s", n)
	}
	testenv.Must(t, cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, stderr.String())
	}
}

// TestVersion: --version anywhere on the line, even after a bad flag.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}, {"--log-level", "debug", "--version"}, {"--bogus", "--version"}} {
		var out, errs bytes.Buffer
		if code := run(context.Background(), args, &out, &errs); code != 0 || out.String() != "worker dev\n" || errs.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out.String(), errs.String())
		}
	}
}
