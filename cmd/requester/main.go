// Command requester calls a regcap fleet: single requests, and (see the
// other files) cache prefetch and benchmarks.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/term"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/flagenv"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1 // an error reply, or some prefetches failed
	exitUnreachable = 2 // no responders, timeout, bad usage
)

const usage = `Usage: requester COMMAND [flags] [args]

Commands:
  digest IMAGE     print {"digest":"sha256:…"} for IMAGE
  manifest IMAGE   print IMAGE's manifest as the registry sent it
  config IMAGE     print {"manifest":…,"digest":…,"config":…} for IMAGE
  prefetch         warm the fleet's cache for a list of images
  bench            measure the fleet against a plain NATS echo

  run POLICY.wasm  run a Kubewarden WASI policy, its host calls answered by the fleet
Run 'requester COMMAND --help' for a command's flags.
`

// command is one subcommand: it adds its flags and runs with the parsed
// connection options.
type command struct {
	summary string
	flags   func(fs *flag.FlagSet)
	run     func(ctx context.Context, env *cmdEnv, args []string) int
}

func commands() map[string]*command {
	cmds := map[string]*command{}
	for _, c := range []struct {
		name string
		fn   contract.Function
	}{{"digest", contract.ManifestDigest}, {"manifest", contract.OCIManifest}, {"config", contract.OCIManifestConfig}} {
		cmds[c.name] = singleCommand(c.name, c.fn)
	}
	cmds["prefetch"] = prefetchCommand()
	cmds["bench"] = benchCommand()
	return cmds
	cmds["run"] = runCommand()
}

// cmdEnv is what every command gets: standard streams and a connection.
type cmdEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	conn           connFlags
	connect        func() (*nats.Conn, error)
	// retried counts the calls the client sent a second time (a NATS
	// node failed over, or a reply outlived --attempt-timeout).
	retried atomic.Int64
	tp      trace.TracerProvider // nil unless OTEL_* turns tracing on
}

// client is a fleet client over nc that counts its retries in
// env.retried.
func (env *cmdEnv) client(nc *nats.Conn) *client.Client {
	return env.conn.client(nc, client.WithRetryHook(func(contract.Function, error) { env.retried.Add(1) }), client.WithTracerProvider(env.tp))
}

// reportRetries says on stderr how many calls were sent twice, if any.
func (env *cmdEnv) reportRetries(cmd string) {
	what := "requests were"
	switch n := env.retried.Load(); n {
	case 0:
		return
	case 1:
		what = "request was"
		fallthrough
	default:
		fmt.Fprintf(env.stderr, "requester %s: %d %s sent a second time (a NATS node failed over, or a reply took longer than --attempt-timeout)\n", cmd, n, what)
	}
}

type connFlags struct {
	url, prefix     string
	timeout         time.Duration
	attemptTimeout  time.Duration
	creds, nkey     string
	tlsCA           string
	tlsCert, tlsKey string
	output          string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	def := os.Getenv("NATS_URL")
	if def == "" {
		def = nats.DefaultURL
	}
	fs.StringVar(&c.url, "nats-url", def, "NATS server URL(s), comma-separated (env NATS_URL)")
	fs.StringVar(&c.prefix, "subject-prefix", "kubewarden", "subject prefix of the fleet")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for one reply (a worker answers within --lock-wait + --fetch-timeout, 20s by default)")
	fs.DurationVar(&c.attemptTimeout, "attempt-timeout", client.DefaultAttemptTimeout, "how long one attempt waits for its reply before the request is sent again, once, within --timeout (0: never)")
	fs.StringVar(&c.creds, "creds", "", "NATS user credentials file")
	fs.StringVar(&c.nkey, "nkey", "", "NATS NKey seed file")
	fs.StringVar(&c.tlsCA, "tlsca", "", "CA certificate to verify the NATS server")
	fs.StringVar(&c.tlsCert, "tlscert", "", "client certificate for NATS TLS")
	fs.StringVar(&c.tlsKey, "tlskey", "", "client key for NATS TLS")
	fs.StringVar(&c.output, "o", "text", "output format: text or json")
}

func (c *connFlags) dial() (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("regcap-requester"), nats.Timeout(c.timeout)}
	if c.creds != "" {
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(c.nkey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	if c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(c.tlsCA))
	}
	if c.tlsCert != "" || c.tlsKey != "" {
		opts = append(opts, nats.ClientCert(c.tlsCert, c.tlsKey))
	}
	nc, err := nats.Connect(c.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", c.url, err)
	}
	return nc, nil
}

func (c *connFlags) client(nc *nats.Conn, opts ...client.Option) *client.Client {
	return client.New(nc, append([]client.Option{client.WithSubjectPrefix(c.prefix), client.WithTimeout(c.timeout), client.WithAttemptTimeout(c.attemptTimeout)}, opts...)...)
}

// version is set at link time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	ctx, stop := signalContext()
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// signalContext returns a context that the first SIGINT or SIGTERM
// cancels. That signal also restores the default handling, so that a
// second Ctrl-C kills the process at once if the clean stop hangs.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 0:
		// Asked for nothing: the usage, as an error.
		fmt.Fprint(stderr, usage)
		return exitUnreachable
	case args[0] == "-h" || args[0] == "--help" || args[0] == "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	case args[0] == "--version" || args[0] == "version":
		fmt.Fprintln(stdout, "requester", version)
		return exitOK
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "requester: unknown command %q (see requester --help)\n", args[0])
		return exitUnreachable
	}
	env := &cmdEnv{stdin: stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("requester "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are one line below; the usage only on --help
	env.conn.register(fs)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fs.Usage = flagenv.Usage(fs, "Usage: requester "+args[0]+" "+cmd.summary, "REQUESTER_", map[string]string{"nats-url": "NATS_URL"})
	if err := fs.Parse(interleave(fs, args[1:])); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return exitOK
		}
		fmt.Fprintf(stderr, "requester %s: %v (see requester %s --help)\n", args[0], err, args[0])
		return exitUnreachable
	}
	if err := flagenv.Apply(fs, "REQUESTER_", map[string]string{"nats-url": "NATS_URL"}, nil); err != nil {
		fmt.Fprintln(stderr, "requester:", err)
		return exitUnreachable
	}
	if env.conn.output != "text" && env.conn.output != "json" {
		fmt.Fprintf(stderr, "requester: -o %q: want text or json\n", env.conn.output)
		return exitUnreachable
	}
	tp, stopTracing, err := startTracing(ctx, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "requester:", err)
		return exitUnreachable
	}
	defer stopTracing()
	env.tp = tp
	env.connect = env.conn.dial
	return cmd.run(ctx, env, fs.Args())
}

// interleave moves flags after positional arguments to the front, so that
// "requester digest busybox --timeout 2s" works as in kubectl and crane.
func interleave(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) > 1 && a[0] == '-' {
			flags = append(flags, a)
			name := a[1:]
			if len(name) > 0 && name[0] == '-' {
				name = name[1:]
			}
			if eq := indexByte(name, '='); eq >= 0 {
				continue
			}
			if f := fs.Lookup(name); f != nil && !isBool(f) && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func singleCommand(name string, fn contract.Function) *command {
	var platform string
	return &command{
		summary: "IMAGE [flags]",
		flags: func(fs *flag.FlagSet) {
			if fn == contract.OCIManifestConfig {
				fs.StringVar(&platform, "platform", "", "resolve an index to os/arch[/variant] instead of the worker's platform")
			}
		},
		run: func(ctx context.Context, env *cmdEnv, args []string) int {
			if len(args) != 1 {
				fmt.Fprintf(env.stderr, "requester %s: want exactly one IMAGE, got %d arguments\n", name, len(args))
				return exitUnreachable
			}
			nc, err := env.connect()
			if err != nil {
				fmt.Fprintln(env.stderr, "requester:", err)
				return exitUnreachable
			}
			defer nc.Close()
			var opts []client.CallOption
			if platform != "" {
				opts = append(opts, client.WithPlatform(platform))
			}
			start := time.Now()
			r, err := env.client(nc).Image(ctx, fn, args[0], opts...)
			elapsed := time.Since(start)
			if err == nil && env.conn.output == "text" {
				// A failure says why in its own line; a success that
				// took a second request says so.
				env.reportRetries(name)
			}
			var ce *contract.Error
			switch {
			case errors.As(err, &ce) && env.conn.output == "json":
				writeJSON(env.stdout, singleJSON{Image: args[0], Function: string(fn), Error: &errorJSON{Code: ce.Code, Message: ce.Message, RetryAfter: ce.RetryAfter}, Seconds: elapsed.Seconds()})
				return exitFailed
			case errors.As(err, &ce):
				fmt.Fprintf(env.stderr, "error %d: %s\n", ce.Code, ce.Message)
				return exitFailed
			case err != nil && env.conn.output == "json":
				writeJSON(env.stdout, singleJSON{Image: args[0], Function: string(fn), Error: &errorJSON{Message: err.Error(), Unreachable: true}, Seconds: elapsed.Seconds()})
				return exitUnreachable
			case err != nil:
				fmt.Fprintln(env.stderr, "requester:", err)
				return exitUnreachable
			}
			if env.conn.output == "json" {
				out := singleJSON{Image: args[0], Function: string(fn), Cache: string(r.Cache), Seconds: elapsed.Seconds(), Reply: json.RawMessage(r.Body)}
				if r.Cache == contract.Stale {
					out.AgeSeconds = int(r.Age.Seconds())
				}
				writeJSON(env.stdout, out)
				return exitOK
			}
			if r.Cache == contract.Stale {
				// The body is still the answer; say on stderr that it is
				// an old one, served because the registry is failing.
				fmt.Fprintf(env.stderr, "requester %s: stale answer, fetched %s ago: the registry is failing (Regcap-Cache: stale)\n", name, r.Age)
			}
			_, _ = env.stdout.Write(r.Body)
			fmt.Fprintln(env.stdout)
			return exitOK
		},
	}
}

// singleJSON is what a single call prints with -o json: one document,
// the reply and how it was answered, or the error.
type singleJSON struct {
	Image      string          `json:"image"`
	Function   string          `json:"function"`
	Cache      string          `json:"cache,omitempty"`
	AgeSeconds int             `json:"age_seconds,omitempty"`
	Seconds    float64         `json:"seconds"`
	Reply      json.RawMessage `json:"reply,omitempty"`
	Error      *errorJSON      `json:"error,omitempty"`
}

type errorJSON struct {
	Code        int    `json:"code,omitempty"`
	Message     string `json:"message"`
	RetryAfter  string `json:"retry_after,omitempty"`
	Unreachable bool   `json:"unreachable,omitempty"`
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// isTerminal reports whether f is a terminal (not merely a character
// device such as /dev/null).
func isTerminal(f *os.File) bool {
	return term.IsTerminal(int(f.Fd()))
}
