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
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/term"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/flagenv"
	"github.com/regcap/regcap/internal/handlers"
)

// Exit codes, the same for every command (see usage).
const (
	exitOK          = 0 // answered
	exitFailed      = 1 // the fleet answered with an error (or a reference it would refuse), or some prefetches failed
	exitUsage       = 2 // bad usage: flags, arguments, input files
	exitUnreachable = 3 // no worker answered: NATS unreachable, no responders, or timed out
)

const usage = `Usage: requester COMMAND [flags] [args]

Calls a regcap fleet over NATS, as a policy host does.

Commands:
  digest IMAGE     print {"digest":"sha256:…"} for IMAGE
  manifest IMAGE   print IMAGE's manifest as the registry sent it
  config IMAGE     print {"manifest":…,"digest":…,"config":…} for IMAGE
  prefetch         warm the fleet's cache for a list of images
  bench            measure the fleet against a plain NATS echo
  run POLICY.wasm  run a Kubewarden WASI policy, its host calls answered by the fleet
  completion SHELL print a completion script for bash, zsh or fish
  version          print the version (also --version, anywhere on the line)

Exit codes:
  0  answered
  1  the fleet answered with an error (a reference it would refuse is
     refused before sending, the same way), or some prefetches failed
  2  bad usage: an unknown flag, a bad value, a missing argument
  3  the fleet could not be reached: NATS unreachable, no worker
     subscribed, or no reply within --timeout

With -o json (--output json) stdout is always one JSON document, errors
included.

Examples:
  requester digest busybox:1.36 --nats-url nats://127.0.0.1:4222
  requester config ghcr.io/kubewarden/policy-server:v1.9.0 --platform linux/arm64 -o json
  kubectl get deploy -A -o yaml | requester prefetch --from-k8s-yaml -
  requester bench busybox --concurrency 1,8,32
  source <(requester completion bash)

Run 'requester COMMAND --help' for a command's flags.
`

// command is one subcommand: it adds its flags and runs with the parsed
// connection options.
type command struct {
	summary  string
	examples string // shown at the end of the command's --help
	flags    func(fs *flag.FlagSet)
	run      func(ctx context.Context, env *cmdEnv, args []string) int
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
	cmds["run"] = runCommand()
	return cmds
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
	ackTimeout      time.Duration
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
	fs.DurationVar(&c.attemptTimeout, "attempt-timeout", client.DefaultAttemptTimeout, "how long an acknowledged attempt waits for its reply before the request is sent again, within --timeout (0: never)")
	fs.DurationVar(&c.ackTimeout, "ack-timeout", client.DefaultAckTimeout, "how long an attempt waits for a worker to acknowledge it (or answer) before the request is sent again: a request lost with a NATS node (0: ask for no acknowledgement)")
	fs.StringVar(&c.creds, "creds", "", "NATS user credentials file")
	fs.StringVar(&c.nkey, "nkey", "", "NATS NKey seed file")
	fs.StringVar(&c.tlsCA, "tlsca", "", "CA certificate to verify the NATS server")
	fs.StringVar(&c.tlsCert, "tlscert", "", "client certificate for NATS TLS")
	fs.StringVar(&c.tlsKey, "tlskey", "", "client key for NATS TLS")
	fs.Var(outputValue{&c.output}, "o", "output `FORMAT`: text or json (also --output)")
	fs.Var(outputValue{&c.output}, "output", "output `FORMAT`: text or json")
}

// check reports the connection flags that no connection could use.
func (c *connFlags) check() error {
	var errs []error
	if c.timeout <= 0 {
		errs = append(errs, &flagenv.FlagError{Name: "--timeout", Problem: fmt.Sprintf("want a positive duration such as 30s, got %s", c.timeout)})
	}
	if c.ackTimeout < 0 {
		errs = append(errs, &flagenv.FlagError{Name: "--ack-timeout", Problem: fmt.Sprintf("want a duration of 0 (ask for no acknowledgement) or more, got %s", c.ackTimeout)})
	}
	if c.attemptTimeout < 0 {
		errs = append(errs, &flagenv.FlagError{Name: "--attempt-timeout", Problem: fmt.Sprintf("want a duration of 0 (never retry) or more, got %s", c.attemptTimeout)})
	}
	if c.prefix == "" || strings.ContainsAny(c.prefix, " \t*>") || strings.Contains(c.prefix, "..") || strings.HasPrefix(c.prefix, ".") || strings.HasSuffix(c.prefix, ".") {
		errs = append(errs, &flagenv.FlagError{Name: "--subject-prefix", Problem: fmt.Sprintf("want dot-separated NATS subject tokens without spaces, * or > (such as kubewarden), got %q", c.prefix)})
	}
	return errors.Join(errs...)
}

// outputValue is -o/--output: text or json.
type outputValue struct{ v *string }

func (o outputValue) String() string {
	if o.v == nil {
		return "text"
	}
	return *o.v
}

func (o outputValue) Set(s string) error {
	if s != "text" && s != "json" {
		return errors.New("want text or json")
	}
	*o.v = s
	return nil
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
	return client.New(nc, append([]client.Option{client.WithSubjectPrefix(c.prefix), client.WithTimeout(c.timeout), client.WithAttemptTimeout(c.attemptTimeout), client.WithAckTimeout(c.ackTimeout)}, opts...)...)
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
	env := &cmdEnv{stdin: stdin, stdout: stdout, stderr: stderr}
	env.conn.output = "text"
	if jsonAsked(args) {
		env.conn.output = "json"
	}
	switch {
	case flagenv.VersionAsked(args):
		fmt.Fprintln(stdout, "requester", version)
		return exitOK
	case len(args) == 0:
		// Asked for nothing: the usage, as an error.
		fmt.Fprint(stderr, usage)
		return exitUsage
	case args[0] == "-h" || args[0] == "--help" || args[0] == "help" && len(args) == 1:
		fmt.Fprint(stdout, usage)
		return exitOK
	case args[0] == "help":
		// "requester help digest" is "requester digest --help".
		return run(ctx, []string{args[1], "--help"}, stdin, stdout, stderr)
	case args[0] == "completion":
		return completion(env, args[1:])
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		return env.usageError("requester", fmt.Errorf("unknown command %q", args[0]))
	}
	name := "requester " + args[0]
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are one line each below; the usage only on --help
	env.conn.register(fs)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	summary := "Usage: " + name + " " + cmd.summary + "\n\nExit 0 answered, 1 the fleet answered with an error, 2 bad usage, 3 the fleet unreachable or timed out."
	if cmd.examples != "" {
		summary += "\n\nExamples:\n" + cmd.examples
	}
	fs.Usage = flagenv.Usage(fs, summary, "REQUESTER_", map[string]string{"nats-url": "NATS_URL"})
	pos, err := flagenv.Parse(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fs.Usage()
		return exitOK
	}
	// Every problem of the command line at once.
	err = errors.Join(err, flagenv.Apply(fs, "REQUESTER_", map[string]string{"nats-url": "NATS_URL"}, nil), env.conn.check())
	if err != nil {
		return env.usageError(name, err)
	}
	tp, stopTracing, err := startTracing(ctx, stderr)
	if err != nil {
		return env.usageError(name, err)
	}
	defer stopTracing()
	env.tp = tp
	env.connect = env.conn.dial
	return cmd.run(ctx, env, pos)
}

// jsonAsked reports whether the command line asks for -o json, read
// before the flags are parsed, so that a usage error is JSON too.
func jsonAsked(args []string) bool {
	out := ""
	for i, a := range args {
		switch {
		case a == "--":
			return out == "json"
		case a == "-o" || a == "--o" || a == "-output" || a == "--output":
			if i+1 < len(args) {
				out = args[i+1]
			}
		case strings.HasPrefix(a, "-o=") || strings.HasPrefix(a, "--o=") || strings.HasPrefix(a, "-output=") || strings.HasPrefix(a, "--output="):
			_, out, _ = strings.Cut(a, "=")
		}
	}
	if out == "" {
		out = os.Getenv("REQUESTER_OUTPUT")
	}
	return out == "json"
}

// usageError reports a bad command line: one line per problem on stderr
// and, with -o json, one JSON document on stdout. Exit 2.
func (env *cmdEnv) usageError(name string, err error) int {
	lines := strings.Split(err.Error(), "\n")
	for _, l := range lines {
		fmt.Fprintf(env.stderr, "%s: %s (see %s --help)\n", name, l, name)
	}
	if env.conn.output == "json" {
		writeJSON(env.stdout, failureJSON{Error: &errorJSON{Message: strings.Join(lines, "; "), Usage: true}})
	}
	return exitUsage
}

// unreachable reports that no worker could be reached: a line on stderr
// and, with -o json, one JSON document on stdout. Exit 3.
func (env *cmdEnv) unreachable(name string, err error) int {
	fmt.Fprintf(env.stderr, "%s: %v\n", name, err)
	if env.conn.output == "json" {
		writeJSON(env.stdout, failureJSON{Error: &errorJSON{Message: err.Error(), Unreachable: true}})
	}
	return exitUnreachable
}

// failureJSON is the one document -o json prints when a command could
// not run at all.
type failureJSON struct {
	Error *errorJSON `json:"error"`
}

func singleCommand(name string, fn contract.Function) *command {
	var platform string
	examples := map[string]string{
		"digest":   "  requester digest busybox:1.36\n  requester digest ghcr.io/kubewarden/policy-server:v1.9.0 -o json | jq -r .reply.digest",
		"manifest": "  requester manifest busybox:1.36 | jq .mediaType\n  requester manifest 127.0.0.1:5000/app:v1 --nats-url nats://nats.regcap:4222",
		"config":   "  requester config busybox:1.36 | jq .config.config.User\n  requester config busybox:1.36 --platform linux/arm64/v8 -o json",
	}
	return &command{
		summary:  "IMAGE [flags]",
		examples: examples[name],
		flags: func(fs *flag.FlagSet) {
			if fn == contract.OCIManifestConfig {
				fs.StringVar(&platform, "platform", "", "resolve an index to os/arch[/variant] instead of the worker's platform")
			}
		},
		run: func(ctx context.Context, env *cmdEnv, args []string) int {
			if len(args) != 1 {
				return env.usageError("requester "+name, fmt.Errorf("want exactly one IMAGE, got %d arguments", len(args)))
			}
			image := args[0]
			// Checked here with the worker's own parser: a reference the
			// fleet would refuse is refused the same way, unsent.
			err := checkReference(fn, image, platform)
			start := time.Now()
			var r *client.Reply
			if err == nil {
				nc, cerr := env.connect()
				if cerr != nil {
					if env.conn.output == "json" {
						writeJSON(env.stdout, singleJSON{Image: image, Function: string(fn), Error: &errorJSON{Message: cerr.Error(), Unreachable: true}})
					}
					fmt.Fprintln(env.stderr, "requester:", cerr)
					return exitUnreachable
				}
				defer nc.Close()
				var opts []client.CallOption
				if platform != "" {
					opts = append(opts, client.WithPlatform(platform))
				}
				r, err = env.client(nc).Image(ctx, fn, image, opts...)
			}
			elapsed := time.Since(start)
			if err == nil && env.conn.output == "text" {
				// A failure says why in its own line; a success that
				// took a second request says so.
				env.reportRetries(name)
			}
			var ce *contract.Error
			switch {
			case errors.As(err, &ce) && env.conn.output == "json":
				writeJSON(env.stdout, singleJSON{Image: image, Function: string(fn), Error: &errorJSON{Code: ce.Code, Message: ce.Message, RetryAfter: ce.RetryAfter}, Seconds: elapsed.Seconds()})
				return exitFailed
			case errors.As(err, &ce):
				fmt.Fprintf(env.stderr, "error %d: %s\n", ce.Code, ce.Message)
				return exitFailed
			case err != nil && env.conn.output == "json":
				writeJSON(env.stdout, singleJSON{Image: image, Function: string(fn), Error: &errorJSON{Message: err.Error(), Unreachable: true}, Seconds: elapsed.Seconds()})
				return exitUnreachable
			case err != nil:
				fmt.Fprintln(env.stderr, "requester:", err)
				return exitUnreachable
			}
			if env.conn.output == "json" {
				out := singleJSON{Image: image, Function: string(fn), Cache: string(r.Cache), Seconds: elapsed.Seconds(), Reply: json.RawMessage(r.Body)}
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

// checkReference parses a request for image as the worker does, and
// returns the *contract.Error (a 400) the fleet would answer, or nil.
func checkReference(fn contract.Function, image, platform string) error {
	payload, err := json.Marshal(image)
	if err != nil {
		return err
	}
	_, err = handlers.ParseRequest(fn, payload, platform, handlers.DefaultPlatform())
	return err
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
	Unreachable bool   `json:"unreachable,omitempty"` // exit 3
	Usage       bool   `json:"usage,omitempty"`       // exit 2
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
