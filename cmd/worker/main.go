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
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/regcap/regcap/internal/flagenv"
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
	exitUsage       = 2 // a bad command line: a flag, a file it names, or a combination
	exitShutdownCut = 3 // --shutdown-timeout ran out: requests in flight were cancelled (answered 503)
)

// run parses the flags and runs one worker until ctx ends, and returns
// its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if flagenv.VersionAsked(args) {
		// Not a flag: REGCAP_<FLAG> would make it one more variable that
		// stops a worker from starting.
		fmt.Fprintln(stdout, "worker", version)
		return exitOK
	}
	f, perr := worker.ParseFlags(args, stdout)
	if errors.Is(perr, flag.ErrHelp) {
		return exitOK
	}
	if perr == nil && f.Probe != "" {
		return probe(ctx, f.Probe, stderr)
	}
	// Every problem of the command line at once, flags and settings
	// alike, before anything is opened.
	bad := errors.Join(perr, f.Validate())
	log, lerr := worker.NewLogger(f.LogLevel, f.LogFormat, stderr)
	if lerr != nil {
		// No logger to say it with: plain lines.
		for _, line := range lines(bad) {
			fmt.Fprintf(stderr, "worker: %s (see worker --help)\n", line)
		}
		return exitUsage
	}
	defer func() { _ = log.Sync() }()
	// A fatal line is one line a person can act on, in the log's
	// encoding, with no caller or stack trace.
	fatal := log.WithOptions(zap.WithCaller(false), zap.AddStacktrace(zapcore.FatalLevel))
	if bad != nil {
		for _, line := range lines(bad) {
			fatal.Error(line + " (see worker --help)")
		}
		return exitUsage
	}
	f.Version, f.Logger = version, log
	w, err := worker.New(ctx, f.Config)
	if err != nil {
		if p := worker.Problems(err); len(p) > 0 {
			for _, line := range lines(err) {
				fatal.Error(line + " (see worker --help)")
			}
			return exitUsage
		}
		fatal.Error(oneLine(err.Error()))
		return exitFailed
	}
	err = w.Run(ctx)
	var cut *worker.ShutdownTimeoutError
	switch {
	case errors.As(err, &cut):
		log.Warn("stopped before answering everything", zap.Int("cancelled", cut.Cancelled), zap.Duration("shutdown_timeout", cut.Timeout))
		return exitShutdownCut
	case err != nil:
		fatal.Error("worker stopped: " + oneLine(err.Error()))
		return exitFailed
	}
	return exitOK
}

// lines splits joined errors into one line each.
func lines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

// oneLine keeps an error on one line.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

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
