// Command worker answers the kubewarden/oci registry capabilities for a
// fleet of policy hosts over NATS, with a cache shared through Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/worker"
)

// version is set at link time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK          = 0 // stopped after answering every request taken
	exitFailed      = 1 // the worker could not start, or failed
	exitUsage       = 2 // a bad command line
	exitShutdownCut = 3 // --shutdown-timeout ran out: requests in flight were cancelled (answered 503)
)

// run parses the flags and runs one worker until ctx ends, and returns
// its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		// Not a flag: REGCAP_<FLAG> would make it one more variable that
		// stops a worker from starting.
		fmt.Fprintln(stdout, "worker", version)
		return exitOK
	}
	f, err := worker.ParseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v (see worker --help)\n", err)
		return exitUsage
	}
	if f.Probe != "" {
		return probe(ctx, f.Probe, stderr)
	}
	log, err := worker.NewLogger(f.LogLevel, f.LogFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v (see worker --help)\n", err)
		return exitUsage
	}
	defer func() { _ = log.Sync() }()
	f.Version, f.Logger = version, log
	w, err := worker.New(ctx, f.Config)
	if err != nil {
		// A start-up failure is one line a person can act on, not a
		// log entry with a stack trace.
		fmt.Fprintln(stderr, "worker:", err)
		return exitFailed
	}
	err = w.Run(ctx)
	var cut *worker.ShutdownTimeoutError
	switch {
	case errors.As(err, &cut):
		log.Warn("stopped before answering everything", zap.Int("cancelled", cut.Cancelled), zap.Duration("shutdown_timeout", cut.Timeout))
		return exitShutdownCut
	case err != nil:
		log.Error("worker stopped", zap.Error(err))
		return exitFailed
	}
	return exitOK
}

// probe is the container healthcheck: distroless images have no curl.
func probe(ctx context.Context, url string, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(stderr, "worker: --probe:", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "worker: --probe:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "worker: --probe:", url, resp.Status)
		return 1
	}
	return 0
}
