package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/bench"
)

// intList is a repeatable flag of comma-separated integers: "1,8,32" or
// "--concurrency 1 --concurrency 8".
type intList []int

func (l *intList) String() string {
	parts := make([]string, len(*l))
	for i, n := range *l {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ",")
}

func (l *intList) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 {
			return fmt.Errorf("%q is not a positive integer", p)
		}
		*l = append(*l, n)
	}
	return nil
}

func benchCommand() *command {
	var (
		file, function, platform string
		levels                   intList
		duration, warmup         time.Duration
		requests, runs           int
		progress                 string
		cold, noEcho, keepTags   bool
	)
	return &command{
		summary: "[-f FILE|-] [IMAGE...] [flags]\n\nMeasures the fleet's throughput and latency, side by side with a plain NATS echo on the same server.\nWith --cold every request asks for a new tag, pushed for it and deleted at the end (--keep-tags keeps them).",
		examples: "  requester bench busybox:1.36 --concurrency 1,8,32 --duration 10s\n" +
			"  requester bench -f images.txt --runs 3 -o json > bench.json\n" +
			"  requester bench 127.0.0.1:5000/app:v1 --cold --requests 500 --concurrency 16",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&file, "f", "", "file of image references, one per line, # comments; - for stdin")
			fs.StringVar(&function, "function", "digest", "function to call: digest, manifest or config")
			fs.StringVar(&platform, "platform", "", "os/arch[/variant] for config")
			fs.Var(&levels, "concurrency", "requests in flight, a list such as 1,8,32 or repeated (default 1)")
			fs.DurationVar(&duration, "duration", 5*time.Second, "length of one measurement (positive)")
			fs.IntVar(&requests, "requests", 0, "requests per measurement instead of --duration (positive; 0: use --duration)")
			fs.DurationVar(&warmup, "warmup", time.Second, "unmeasured load before each measurement")
			fs.IntVar(&runs, "runs", 1, "measure each level this many times and report the medians")
			fs.BoolVar(&cold, "cold", false, "measure the miss path: every request asks for a new tag of the images (needs --requests and push access to their registry)")
			fs.BoolVar(&noEcho, "no-echo", false, "skip the NATS echo comparison")
			fs.BoolVar(&keepTags, "keep-tags", false, "with --cold, leave the regcap-bench-* tags pushed in the registry (by default they are deleted at the end)")
			fs.StringVar(&progress, "progress", "auto", "progress on stderr: auto (on a terminal only), bar or none")
		},
		run: func(ctx context.Context, env *cmdEnv, args []string) int {
			fn, err := parseFunction(function)
			if err != nil {
				return env.usageError("requester bench", fmt.Errorf("--function: %w", err))
			}
			images, err := prefetchInput(env.stdin, file, "", args)
			if err != nil {
				return env.usageError("requester bench", err)
			}
			if len(images) == 0 {
				return env.usageError("requester bench", errors.New("no images: give -f or IMAGE arguments"))
			}
			if cold && requests <= 0 {
				return env.usageError("requester bench", errors.New("--cold needs --requests: each request uses a tag made for it"))
			}
			switch progress {
			case "auto", "bar", "none":
			default:
				return env.usageError("requester bench", fmt.Errorf("--progress: want auto, bar or none, got %q", progress))
			}
			opts := bench.Options{Function: fn, Images: images, Platform: platform, Concurrency: levels,
				Duration: duration, Requests: requests, Warmup: warmup, Runs: runs}
			if err := opts.Check(); err != nil {
				return env.usageError("requester bench", err)
			}
			// A reference the fleet would refuse is refused here, as its
			// 400, before anything is sent.
			for _, img := range images {
				if err := checkReference(fn, img, platform); err != nil {
					return env.benchFailed(err)
				}
			}
			if progress == "bar" || progress == "auto" && isTerminalWriter(env.stderr) {
				opts.OnStage = benchProgress(env.stderr)
			}
			var fresh *bench.Fresh
			if cold {
				fresh = bench.FreshTags(images)
				opts.Fresh = fresh.Tags
				if !keepTags {
					defer func() {
						// The tags pushed are deleted, even after an interrupt.
						dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
						defer cancel()
						n, err := fresh.Cleanup(dctx)
						switch {
						case err != nil:
							fmt.Fprintf(env.stderr, "requester bench: deleted %d of the %d tags pushed; the rest are left: %v (list them: crane ls REPO | grep regcap-bench-)\n", n, fresh.Pushed(), err)
						case n > 0:
							fmt.Fprintf(env.stderr, "requester bench: deleted the %d %s pushed for --cold\n", n, plural(n, "tag", "tags"))
						}
					}()
				}
			}
			nc, err := env.connect()
			if err != nil {
				return env.unreachable("requester", err)
			}
			defer nc.Close()
			var echo *bench.Echo
			if !noEcho {
				// The responder gets a connection of its own, as a worker has.
				rc, err := env.connect()
				if err != nil {
					return env.unreachable("requester", err)
				}
				defer rc.Close()
				echo = &bench.Echo{Requester: nc, Responder: rc, Timeout: env.conn.timeout}
			}
			// A lost connection ends the run: every call after it would
			// fail the same way. It is said once, after the figures so far.
			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			var lost atomic.Pointer[error]
			nc.SetDisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err == nil {
					err = nats.ErrConnectionClosed
				}
				lost.CompareAndSwap(nil, &err)
				cancel()
			})
			rep, err := bench.Run(runCtx, env.client(nc), echo, opts)
			if l := lost.Load(); l != nil {
				if rep != nil {
					writeBench(env, rep)
				}
				fmt.Fprintf(env.stderr, "requester bench: lost the connection to NATS: %v; the figures above cover what was done before\n", *l)
				if rep == nil && env.conn.output == "json" {
					writeJSON(env.stdout, failureJSON{Error: &errorJSON{Message: "lost the connection to NATS: " + (*l).Error(), Unreachable: true}})
				}
				return exitUnreachable
			}
			switch {
			case errors.Is(err, client.ErrUnreachable):
				return env.unreachable("requester bench", err)
			case err != nil:
				return env.benchFailed(err)
			}
			writeBench(env, rep)
			env.reportRetries("bench")
			for _, l := range rep.Levels {
				if l.Regcap.Errors > 0 {
					return exitFailed
				}
			}
			if rep.Interrupted {
				return exitFailed
			}
			return exitOK
		},
	}
}

// writeBench prints rep as the output format asks.
func writeBench(env *cmdEnv, rep *bench.Report) {
	if env.conn.output == "json" {
		writeJSON(env.stdout, rep)
		return
	}
	bench.WriteText(env.stdout, rep)
}

// benchFailed reports an error that stopped the benchmark: the fleet's
// error reply (or the 400 it would give a reference) exits 1 as a single
// request does; with -o json it is one document.
func (env *cmdEnv) benchFailed(err error) int {
	fmt.Fprintln(env.stderr, "requester bench:", err)
	if env.conn.output == "json" {
		e := &errorJSON{Message: err.Error()}
		var ce *contract.Error
		if errors.As(err, &ce) {
			e.Code, e.Message, e.RetryAfter = ce.Code, ce.Message, ce.RetryAfter
		}
		writeJSON(env.stdout, failureJSON{Error: e})
	}
	return exitFailed
}

// benchProgress shows on stderr, on one line rewritten in place, which
// measurement is running; the line is cleared when the run ends.
func benchProgress(w io.Writer) func(bench.Stage) {
	return func(s bench.Stage) {
		if s.Done {
			fmt.Fprint(w, "\r\033[K")
			return
		}
		fmt.Fprintf(w, "\r\033[Kbench: %s at concurrency %d (level %d of %d, run %d of %d)", s.Target, s.Concurrency, s.Level, s.Levels, s.Run, s.Runs)
	}
}

// isTerminalWriter reports whether w is a terminal.
func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminal(f)
}

// plural picks the word for n.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
