package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIsTerminal: /dev/null is a character device, not a terminal.
func TestIsTerminal(t *testing.T) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Fatalf("isTerminal(%s) = true", os.DevNull)
	}
}

const signalChild = "REQUESTER_TEST_SIGNAL_CHILD"

// TestSignalContext runs itself as a child process that gets SIGINT: the
// first cancels the context; a second one then kills the process, as
// Ctrl-C twice does when a clean stop hangs.
func TestSignalContext(t *testing.T) {
	if os.Getenv(signalChild) == "1" {
		signalChildMain()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSignalContext$", "-test.count=1")
	cmd.Env = append(os.Environ(), signalChild+"=1")
	out, err := cmd.CombinedOutput()
	if !strings.Contains(string(out), "first signal: context cancelled") {
		t.Fatalf("the first SIGINT did not just cancel the context: %v\n%s", err, out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v, want it killed by the second SIGINT\n%s", err, out)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Fatalf("child ended with %v, want killed by SIGINT\n%s", ee, out)
	}
}

func signalChildMain() {
	ctx, stop := signalContext()
	defer stop()
	_ = syscall.Kill(os.Getpid(), syscall.SIGINT)
	<-ctx.Done()
	fmt.Println("first signal: context cancelled")
	// Keep sending: the first SIGINT after the handler is gone kills us.
	for range 1000 {
		_ = syscall.Kill(os.Getpid(), syscall.SIGINT)
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("still alive after the second SIGINT")
	os.Exit(0)
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := cli(t, "", "--version")
	if code != 0 || stdout != "requester dev\n" || stderr != "" {
		t.Fatalf("--version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
