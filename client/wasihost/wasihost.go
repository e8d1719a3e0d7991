// Package wasihost runs Kubewarden WASI policies (plain Go built with
// GOOS=wasip1, executionMode: wasi) in wazero, with their kubewarden/oci
// host calls answered by a regcap fleet.
//
// A Host owns a wazero runtime holding the two modules a Kubewarden WASI
// policy imports: WASI preview 1 and "host", whose one function "call" is
// Kubewarden's host-call ABI:
//
//	call(bindingPtr, bindingLen, namespacePtr, namespaceLen,
//	     operationPtr, operationLen, payloadPtr, payloadLen i32) -> i32
//
// The host reads the four strings from the guest's memory and answers the
// call. It returns 0 when the call succeeded and 1 when it failed; either
// way, what the guest reads next from its stdin, until EOF, is the answer
// (on 0) or the error text (on 1). This is what policy-sdk-go's
// pkg/capabilities/hostcaller_gc_wasip1.go expects.
//
// kubewarden/oci/v1/manifest_digest, v1/oci_manifest and
// v1/oci_manifest_config go to the function given to New, typically a
// *client.Client's HostCall; every other call goes to the handler set with
// WithHandler, and without one the guest gets the error text of
// ErrNoHandler.
//
// Host.Compile compiles a policy once; Policy.Validate and
// Policy.ValidateSettings instantiate it afresh for each evaluation, run
// it with "validate" or "validate-settings" as its argument, give it the
// input on stdin and return what it wrote on stdout. The guest gets no
// filesystem, no network, no environment variables; it gets a clock and
// crypto/rand, as Go's runtime wants them. Each evaluation is bounded by a
// timeout (WithTimeout) and the guest's memory by WithMemoryLimit.
package wasihost

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// HostCallFunc answers a host call. It has wapc-go's host-call signature,
// so (*client.Client).HostCall is one. ctx is the evaluation's: it ends
// when the evaluation times out.
type HostCallFunc func(ctx context.Context, binding, namespace, operation string, payload []byte) ([]byte, error)

// Defaults.
const (
	// DefaultTimeout bounds one evaluation, host calls included: long
	// enough for a cold fetch from a slow registry through the fleet
	// (a worker answers within 20s by default), since the guest cannot
	// tell a slow answer from a hung host.
	DefaultTimeout = 30 * time.Second
	// DefaultMemoryLimit is the guest's memory limit in bytes (256 MiB).
	DefaultMemoryLimit = 256 << 20
	// DefaultMaxResponse is the most a guest may write on stdout (16 MiB).
	DefaultMaxResponse = 16 << 20
	// pageSize is a WebAssembly memory page.
	pageSize = 64 << 10
	// maxStderr is how much of a guest's stderr an Error keeps.
	maxStderr = 4 << 10
)

// Host runs Kubewarden WASI policies. It is safe for concurrent use, and
// so are the Policies it compiles.
type Host struct {
	runtime     wazero.Runtime
	oci         HostCallFunc
	handler     HostCallFunc
	timeout     time.Duration
	memoryLimit uint64
	maxResponse int
	cache       wazero.CompilationCache
	stderr      io.Writer
}

// Option configures a Host.
type Option func(*Host)

// WithHandler answers every host call that is not one of the three
// kubewarden/oci capabilities regcap serves (kubewarden/net, sigstore
// verification, kubernetes lookups…). Without it, the guest gets an
// error naming the call.
func WithHandler(f HostCallFunc) Option { return func(h *Host) { h.handler = f } }

// WithTimeout bounds each evaluation, host calls included (default
// DefaultTimeout). A guest still running when it passes is stopped, and
// the evaluation fails with ErrTimeout. Zero or negative: no timeout
// beyond the caller's context.
func WithTimeout(d time.Duration) Option { return func(h *Host) { h.timeout = d } }

// WithMemoryLimit caps the guest's linear memory at n bytes, rounded down
// to whole 64 KiB pages (default DefaultMemoryLimit). A policy whose
// initial memory is larger fails to compile; one that needs more while it
// runs fails to grow its memory, which a Go guest reports by exiting.
func WithMemoryLimit(n uint64) Option { return func(h *Host) { h.memoryLimit = n } }

// WithMaxResponse caps what a guest may write on stdout (default
// DefaultMaxResponse); more is an ErrNotJSON error.
func WithMaxResponse(n int) Option { return func(h *Host) { h.maxResponse = n } }

// WithCompilationCache shares compiled code between Hosts (wazero's
// in-memory or on-disk cache), so that a second Host compiling the same
// policy does not compile it again.
func WithCompilationCache(c wazero.CompilationCache) Option {
	return func(h *Host) { h.cache = c }
}

// WithStderr copies what guests write on stderr to w as well (their logs;
// Kubewarden's SDK logs there). w must be safe for concurrent use when
// evaluations run concurrently. By default stderr is only kept, in part,
// for the Error of a failed evaluation.
func WithStderr(w io.Writer) Option { return func(h *Host) { h.stderr = w } }

// New returns a Host whose guests' kubewarden/oci capability calls are
// answered by oci, typically a *client.Client's HostCall. Close it when
// done.
func New(ctx context.Context, oci HostCallFunc, opts ...Option) (*Host, error) {
	if oci == nil {
		return nil, errors.New("wasihost: nil host-call function for kubewarden/oci")
	}
	h := &Host{oci: oci, timeout: DefaultTimeout, memoryLimit: DefaultMemoryLimit, maxResponse: DefaultMaxResponse}
	for _, o := range opts {
		o(h)
	}
	pages := h.memoryLimit / pageSize
	if pages < 1 {
		return nil, fmt.Errorf("wasihost: memory limit %d bytes is less than one page", h.memoryLimit)
	}
	pages = min(pages, 65536)
	rc := wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(uint32(pages))
	if h.cache != nil {
		rc = rc.WithCompilationCache(h.cache)
	}
	h.runtime = wazero.NewRuntimeWithConfig(ctx, rc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, h.runtime); err != nil {
		_ = h.runtime.Close(ctx)
		return nil, fmt.Errorf("wasihost: instantiating WASI: %w", err)
	}
	i32 := api.ValueTypeI32
	_, err := h.runtime.NewHostModuleBuilder("host").
		NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(h.call), []api.ValueType{i32, i32, i32, i32, i32, i32, i32, i32}, []api.ValueType{i32}).
		WithParameterNames("binding_ptr", "binding_len", "namespace_ptr", "namespace_len", "operation_ptr", "operation_len", "payload_ptr", "payload_len").
		Export("call").
		Instantiate(ctx)
	if err != nil {
		_ = h.runtime.Close(ctx)
		return nil, fmt.Errorf("wasihost: instantiating the host module: %w", err)
	}
	return h, nil
}

// Close closes the runtime and every policy compiled in it.
func (h *Host) Close(ctx context.Context) error { return h.runtime.Close(ctx) }

// ErrNoHandler is the error a guest gets, as its error text, for a host
// call that is not a kubewarden/oci capability when no handler was set.
var ErrNoHandler = errors.New("wasihost: no handler for host call")

// isOCI says whether a call is one of the capabilities regcap serves.
func isOCI(binding, namespace, operation string) bool {
	if binding != "kubewarden" || namespace != "oci" {
		return false
	}
	switch operation {
	case "v1/manifest_digest", "v1/oci_manifest", "v1/oci_manifest_config":
		return true
	}
	return false
}

// route answers one host call.
func (h *Host) route(ctx context.Context, binding, namespace, operation string, payload []byte) ([]byte, error) {
	switch {
	case isOCI(binding, namespace, operation):
		return h.oci(ctx, binding, namespace, operation, payload)
	case h.handler != nil:
		return h.handler(ctx, binding, namespace, operation, payload)
	}
	return nil, fmt.Errorf("%w %s/%s/%s", ErrNoHandler, binding, namespace, operation)
}

// evalKey keys the evaluation in the context of the guest's calls.
type evalKey struct{}

// call is the host.call import: it reads the call from the guest's
// memory, answers it and puts the answer (or the error text) on the
// guest's stdin, and returns 0 (answer) or 1 (error).
func (h *Host) call(ctx context.Context, mod api.Module, stack []uint64) {
	in, _ := ctx.Value(evalKey{}).(*stdin)
	read := func(i int) ([]byte, bool) {
		p, n := api.DecodeU32(stack[i]), api.DecodeU32(stack[i+1])
		b, ok := mod.Memory().Read(p, n)
		return bytes.Clone(b), ok
	}
	fail := func(err error) {
		if in != nil {
			in.set([]byte(err.Error()))
		}
		stack[0] = 1
	}
	if in == nil {
		// A policy instantiated in this runtime by other means than
		// Validate: there is no stdin to answer on.
		fail(errors.New("wasihost: host call outside an evaluation"))
		return
	}
	if mod.Memory() == nil {
		fail(errors.New("wasihost: the guest exports no memory"))
		return
	}
	binding, ok1 := read(0)
	namespace, ok2 := read(2)
	operation, ok3 := read(4)
	payload, ok4 := read(6)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		fail(errors.New("wasihost: host call arguments outside the guest's memory"))
		return
	}
	answer, err := h.route(ctx, string(binding), string(namespace), string(operation), payload)
	if err != nil {
		fail(err)
		return
	}
	in.set(answer)
	stack[0] = 0
}

// stdin is the guest's stdin: the evaluation's input first, then, after
// each host call, that call's answer. Each reads to EOF; a host call
// replaces whatever the guest left unread.
type stdin struct {
	mu sync.Mutex
	r  bytes.Reader
}

func (s *stdin) set(b []byte) {
	s.mu.Lock()
	s.r.Reset(b)
	s.mu.Unlock()
}

func (s *stdin) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Read(p)
}

// Policy is a compiled policy, instantiated afresh for each evaluation.
type Policy struct {
	host     *Host
	name     string
	compiled wazero.CompiledModule
}

// Compile compiles a policy's WebAssembly module once, for any number of
// evaluations. name names the policy in errors (a file name, a URL).
func (h *Host) Compile(ctx context.Context, name string, wasm []byte) (*Policy, error) {
	cm, err := h.runtime.CompileModule(ctx, wasm)
	if err != nil {
		return nil, &Error{Policy: name, Kind: ErrCompile, Err: err}
	}
	return &Policy{host: h, name: name, compiled: cm}, nil
}

// Name is the name the policy was compiled with.
func (p *Policy) Name() string { return p.name }

// Close releases the compiled code.
func (p *Policy) Close(ctx context.Context) error { return p.compiled.Close(ctx) }

// Validate runs the policy's validate with input, Kubewarden's
// ValidationRequest ({"request":…,"settings":…}), on its stdin, and
// returns the ValidationResponse it wrote on stdout. A failure is an
// *Error.
func (p *Policy) Validate(ctx context.Context, input []byte) (json.RawMessage, error) {
	return p.Run(ctx, "validate", input)
}

// ValidateSettings runs the policy's validate-settings with the settings
// JSON on its stdin and returns the SettingsValidationResponse
// ({"valid":…,"message":…}) it wrote on stdout. A failure is an *Error.
func (p *Policy) ValidateSettings(ctx context.Context, settings []byte) (json.RawMessage, error) {
	return p.Run(ctx, "validate-settings", settings)
}

// Run instantiates the policy with command as its argument ("validate",
// "validate-settings"), input on its stdin, and returns what it wrote on
// stdout, which must be JSON. A failure is an *Error.
func (p *Policy) Run(ctx context.Context, command string, input []byte) (json.RawMessage, error) {
	h := p.host
	if h.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
		defer cancel()
	}
	in := &stdin{}
	in.set(input)
	ctx = context.WithValue(ctx, evalKey{}, in)
	stdout := &capped{max: h.maxResponse}
	stderr := &capped{max: maxStderr}
	var errw io.Writer = stderr
	if h.stderr != nil {
		errw = io.MultiWriter(stderr, h.stderr)
	}
	cfg := wazero.NewModuleConfig().
		WithName(""). // anonymous, so that evaluations may overlap
		WithArgs(p.name, command).
		WithStdin(in).
		WithStdout(stdout).
		WithStderr(errw).
		WithSysWalltime().
		WithSysNanotime().
		WithSysNanosleep().
		WithRandSource(rand.Reader)
	start := time.Now()
	mod, err := h.runtime.InstantiateModule(ctx, p.compiled, cfg)
	if mod != nil {
		_ = mod.Close(context.WithoutCancel(ctx))
	}
	fail := func(kind, err error, code uint32) (json.RawMessage, error) {
		return nil, &Error{Policy: p.name, Command: command, Kind: kind, ExitCode: code, Stderr: stderr.String(), Err: err}
	}
	if err != nil {
		var exit *sys.ExitError
		switch {
		case errors.As(err, &exit) && exit.ExitCode() == sys.ExitCodeDeadlineExceeded:
			// The Host's timeout, or the caller's deadline if sooner.
			return fail(ErrTimeout, fmt.Errorf("stopped after %v", time.Since(start).Round(time.Millisecond)), 0)
		case errors.As(err, &exit) && exit.ExitCode() == sys.ExitCodeContextCanceled:
			return fail(ErrCanceled, context.Canceled, 0)
		case errors.As(err, &exit):
			return fail(ErrExit, fmt.Errorf("exit code %d", exit.ExitCode()), exit.ExitCode())
		}
		return fail(ErrTrap, err, 0)
	}
	if stdout.over {
		return fail(ErrNotJSON, fmt.Errorf("response larger than %d bytes", h.maxResponse), 0)
	}
	out := bytes.TrimSpace(stdout.buf.Bytes())
	if !json.Valid(out) {
		return fail(ErrNotJSON, fmt.Errorf("response %q is not JSON", snippet(out)), 0)
	}
	return json.RawMessage(out), nil
}

// snippet shortens b for an error message.
func snippet(b []byte) string {
	const n = 200
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// capped keeps what is written up to max bytes and notes any more. A
// write beyond max still succeeds, so that a guest is not stopped by a
// failed write before its exit code is known.
type capped struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.max - c.buf.Len()
	if len(p) > room {
		c.over = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	c.buf.Write(p)
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Kinds of failure, for errors.Is on an *Error.
var (
	// ErrCompile: the module is not valid WebAssembly, or does not fit
	// the Host (its initial memory is above the limit, say).
	ErrCompile = errors.New("does not compile")
	// ErrTrap: the guest trapped (unreachable, out-of-bounds access…) or
	// could not be instantiated (an import the Host does not provide).
	ErrTrap = errors.New("trapped")
	// ErrTimeout: the evaluation ran past the Host's timeout.
	ErrTimeout = errors.New("timed out")
	// ErrCanceled: the caller's context was canceled.
	ErrCanceled = errors.New("canceled")
	// ErrExit: the guest exited with a non-zero exit code (a Go guest
	// that panics exits with code 2).
	ErrExit = errors.New("exited with an error")
	// ErrNotJSON: the guest exited 0 but what it wrote on stdout is not
	// JSON (or is larger than the Host's response limit).
	ErrNotJSON = errors.New("response is not JSON")
)

// Error is a failed compilation or evaluation.
type Error struct {
	// Policy is the name given to Compile.
	Policy string
	// Command is "validate", "validate-settings" or, for a compilation,
	// "".
	Command string
	// Kind is one of ErrCompile, ErrTrap, ErrTimeout, ErrCanceled,
	// ErrExit, ErrNotJSON.
	Kind error
	// ExitCode is the guest's exit code, for ErrExit.
	ExitCode uint32
	// Stderr is the start of what the guest wrote on stderr (a Go
	// guest's panic, say).
	Stderr string
	// Err is the cause.
	Err error
}

func (e *Error) Error() string {
	what := "policy " + e.Policy
	if e.Command != "" {
		what += " " + e.Command
	}
	msg := fmt.Sprintf("%s: %v: %v", what, e.Kind, e.Err)
	if e.Stderr != "" {
		msg += "; stderr: " + snippet(bytes.TrimSpace([]byte(e.Stderr)))
	}
	return msg
}

// Unwrap gives errors.Is and errors.As both the kind and the cause.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }
