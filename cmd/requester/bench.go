package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
		cold, noEcho             bool
	)
	return &command{
		summary: "[-f FILE|-] [IMAGE...] [flags]\n\nMeasures the fleet's throughput and latency, side by side with a plain NATS echo on the same server.",
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
		},
		run: func(ctx context.Context, env *cmdEnv, args []string) int {
			fn, err := parseFunction(function)
			if err != nil {
				fmt.Fprintln(env.stderr, "requester bench: --function:", err)
				return exitUnreachable
			}
			images, err := prefetchInput(env.stdin, file, "", args)
			if err != nil {
				fmt.Fprintln(env.stderr, "requester bench:", err)
				return exitUnreachable
			}
			if len(images) == 0 {
				fmt.Fprintln(env.stderr, "requester bench: no images: give -f or IMAGE arguments")
				return exitUnreachable
			}
			if cold && requests <= 0 {
				fmt.Fprintln(env.stderr, "requester bench: --cold needs --requests: each request uses a tag made for it")
				return exitUnreachable
			}
			opts := bench.Options{Function: fn, Images: images, Platform: platform, Concurrency: levels,
				Duration: duration, Requests: requests, Warmup: warmup, Runs: runs}
			if err := opts.Check(); err != nil {
				fmt.Fprintln(env.stderr, "requester bench:", err)
				return exitUnreachable
			}
			if cold {
				opts.Fresh = bench.FreshTags(images)
			}
			nc, err := env.connect()
			if err != nil {
				fmt.Fprintln(env.stderr, "requester:", err)
				return exitUnreachable
			}
			defer nc.Close()
			var echo *bench.Echo
			if !noEcho {
				// The responder gets a connection of its own, as a worker has.
				rc, err := env.connect()
				if err != nil {
					fmt.Fprintln(env.stderr, "requester:", err)
					return exitUnreachable
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
				return exitUnreachable
			}
			var ce *contract.Error
			switch {
			case errors.Is(err, client.ErrUnreachable):
				fmt.Fprintln(env.stderr, "requester bench:", err)
				return exitUnreachable
			case errors.As(err, &ce):
				fmt.Fprintln(env.stderr, "requester bench:", err)
				return exitFailed
			case err != nil:
				fmt.Fprintln(env.stderr, "requester bench:", err)
				return exitFailed
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
