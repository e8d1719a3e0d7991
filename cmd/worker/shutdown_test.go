package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	bin := testenv.BuildCommand(t, "worker")
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "inflight", "v1", testenv.OCIManifest, "linux/amd64")
	gate := reg.Hold("/inflight/manifests/")

	var stderr testenv.SyncBuffer
	cmd := exec.Command(bin, "--nats-url", ns.ClientURL(), "--metrics-addr", "", "--log-format", "console")
	cmd.Env = append(os.Environ(), "REDIS_URL=")
	cmd.Stderr = &stderr
	testenv.Must(t, cmd.Start(), "starting worker")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("worker stderr:\n%s", stderr.String())
		}
	})

	nc := testenv.Connect(t, ns.ClientURL())
	cli := client.New(nc, client.WithTimeout(30*time.Second))
	// Subscribed once a bad request is answered with its 400.
	testenv.Eventually(t, "the worker to subscribe", func() bool {
		for _, fn := range []contract.Function{contract.ManifestDigest, contract.OCIManifest, contract.OCIManifestConfig} {
			_, err := cli.Call(context.Background(), fn, []byte(`""`))
			var ce *contract.Error
			if !errors.As(err, &ce) || ce.Code != 400 {
				return false
			}
		}
		return true
	})

	reply := make(chan *client.Reply, 1)
	replyErr := make(chan error, 1)
	go func() {
		r, err := cli.Image(context.Background(), contract.OCIManifest, reg.Ref("inflight", "v1"))
		if err != nil {
			replyErr <- err
			return
		}
		reply <- r
	}()
	select {
	case <-gate.Arrived():
	case err := <-replyErr:
		t.Fatalf("request failed before reaching the registry: %v", err)
	}
	testenv.Must(t, cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")

	// Drained: the subjects have no responder any more, while the fetch
	// taken before SIGTERM is still held.
	testenv.Eventually(t, "the subscriptions to drain", func() bool {
		_, err := nc.Request(contract.OCIManifest.Subject("kubewarden"), []byte(`"x"`), 2*time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
	select {
	case err := <-exited:
		t.Fatalf("worker exited with a request in flight: %v", err)
	default:
	}
	gate.Release()

	select {
	case r := <-reply:
		if !bytes.Equal(r.Body, img.Manifest) {
			t.Fatalf("reply after SIGTERM: %s", r.Body)
		}
	case err := <-replyErr:
		t.Fatalf("request in flight at SIGTERM failed: %v", err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("worker exit: %v", err)
	}
}

// TestHelpListsEveryFlagWithItsVariable checks `worker --help` and that
// the environment sets flags.
func TestHelpListsEveryFlagWithItsVariable(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out); code != 0 {
		t.Fatalf("--help exit %d", code)
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

func TestBadFlagsExit2(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"--log-format", "xml"}, {"--platform", "linux"}, {"extra"}} {
		var out bytes.Buffer
		code := run(context.Background(), append(args, "--metrics-addr", ""), &out)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2; output %s", args, code, out.String())
		}
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
	testenv.Must(t, cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, stderr.String())
	}
}
