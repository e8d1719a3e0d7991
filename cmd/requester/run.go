package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"

	"github.com/regcap/regcap/client/wasihost"
	"github.com/regcap/regcap/contract"
)

// Exit codes of run, beside exitOK: the other commands' meanings, and one
// of its own for a policy that failed to give a decision.
const (
	runExitUsage       = 2 // bad flags, unreadable request, policy or settings
	runExitUnreachable = 3 // the fleet could not be reached, at start or by a host call
	runExitPolicy      = 4 // the policy did not compile, trapped, timed out, or wrote no response
)

// Bounds on what run reads.
const (
	maxPolicyBytes  = 64 << 20 // a policy module
	maxRequestBytes = 16 << 20 // an admission request or settings document
)

const runSummary = `POLICY.wasm --request-path FILE [--settings-json JSON | --settings-path FILE] [flags]

Runs a Kubewarden WASI policy (plain Go built with GOOS=wasip1, executionMode:
wasi) as 'kwctl run' does, in process with wazero, with every kubewarden/oci
host call (manifest_digest, oci_manifest, oci_manifest_config) answered by the
fleet at --nats-url. --request-path takes an AdmissionReview or its request
object ('-' for stdin). Prints the policy's validation response as JSON
(accepted, and message, code, mutated_object when present); -o text prints
one line. With --validate-settings, runs validate-settings on the settings
instead and prints {"valid":…,"message":…}.

Exit 0 when the policy gave a response, whatever it decided; 2 on bad usage
or input; 3 when the fleet could not be reached (at start, or by a host call:
the response is still printed); 4 when the policy did not compile, trapped,
timed out or wrote something that is not a response.

Example:
  requester run policy.wasm --request-path review.json --settings-json '{"pin_tags":true}' --nats-url nats://127.0.0.1:4222`

// runFlags are run's own flags.
type runFlags struct {
	requestPath, settingsJSON, settingsPath string
	validateSettings                        bool
	policyTimeout                           time.Duration
	memoryLimitMiB                          uint64
	cacheDir                                string
}

func runCommand() *command {
	var rf runFlags
	var fs *flag.FlagSet
	return &command{
		summary: runSummary,
		flags: func(f *flag.FlagSet) {
			fs = f
			f.StringVar(&rf.requestPath, "request-path", "", "file holding the AdmissionReview or its request object ('-' for stdin)")
			f.StringVar(&rf.settingsJSON, "settings-json", "", "the policy's settings as JSON (default {})")
			f.StringVar(&rf.settingsPath, "settings-path", "", "file holding the policy's settings as JSON")
			f.BoolVar(&rf.validateSettings, "validate-settings", false, "run validate-settings on the settings instead of validate")
			f.DurationVar(&rf.policyTimeout, "policy-timeout", wasihost.DefaultTimeout, "bound on one evaluation, host calls included")
			f.Uint64Var(&rf.memoryLimitMiB, "policy-memory", wasihost.DefaultMemoryLimit>>20, "the policy's memory limit in MiB")
			f.StringVar(&rf.cacheDir, "cache-dir", defaultCacheDir(), "folder keeping policies' compiled code between runs, as kwctl does (empty: compile every time)")
		},
		run: func(ctx context.Context, env *cmdEnv, args []string) int {
			// Unlike the other commands, run prints JSON unless asked
			// for text: its output is the policy's response, a document.
			output := "json"
			fs.Visit(func(f *flag.Flag) {
				if f.Name == "o" || f.Name == "output" {
					output = env.conn.output
				}
			})
			return rf.run(ctx, env, args, output)
		},
	}
}

func (rf *runFlags) run(ctx context.Context, env *cmdEnv, args []string, output string) int {
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(env.stderr, "requester run: "+format+" (see requester run --help)\n", a...)
		return runExitUsage
	}
	if len(args) != 1 {
		return usageErr("want exactly one POLICY.wasm, got %d arguments", len(args))
	}
	policyPath := args[0]
	if rf.settingsJSON != "" && rf.settingsPath != "" {
		return usageErr("--settings-json and --settings-path exclude each other")
	}
	if rf.requestPath == "" && !rf.validateSettings {
		return usageErr("--request-path is required (an AdmissionReview or its request; '-' for stdin)")
	}
	if rf.requestPath == "-" && rf.settingsPath == "-" {
		return usageErr("--request-path and --settings-path cannot both be stdin")
	}
	settings, err := rf.settings(env.stdin)
	if err != nil {
		return usageErr("%v", err)
	}
	var input []byte
	command := "validate-settings"
	if rf.validateSettings {
		input = settings
	} else {
		command = "validate"
		raw, err := readInput(rf.requestPath, env.stdin)
		if err != nil {
			return usageErr("--request-path: %v", err)
		}
		req, err := admissionRequest(raw)
		if err != nil {
			return usageErr("--request-path %s: %v", rf.requestPath, err)
		}
		input, _ = json.Marshal(struct {
			Request  json.RawMessage `json:"request"`
			Settings json.RawMessage `json:"settings"`
		}{req, settings})
	}
	wasm, err := readFile(policyPath, maxPolicyBytes)
	if err != nil {
		return usageErr("%v", err)
	}

	nc, err := env.connect()
	if err != nil {
		fmt.Fprintln(env.stderr, "requester run:", err)
		return runExitUnreachable
	}
	defer nc.Close()
	calls := &hostCalls{oci: env.client(nc).HostCall}
	opts := []wasihost.Option{wasihost.WithTimeout(rf.policyTimeout), wasihost.WithMemoryLimit(rf.memoryLimitMiB << 20)}
	if rf.cacheDir != "" {
		// Compiling a Go policy takes seconds; wazero keys what it keeps
		// by the module's hash and its own version.
		cache, err := wazero.NewCompilationCacheWithDir(rf.cacheDir)
		if err != nil {
			return usageErr("--cache-dir: %v", err)
		}
		defer cache.Close(context.WithoutCancel(ctx))
		opts = append(opts, wasihost.WithCompilationCache(cache))
	}
	host, err := wasihost.New(ctx, calls.call, opts...)
	if err != nil {
		fmt.Fprintln(env.stderr, "requester run:", err)
		return runExitPolicy
	}
	defer host.Close(context.WithoutCancel(ctx))
	policy, err := host.Compile(ctx, policyPath, wasm)
	if err != nil {
		fmt.Fprintln(env.stderr, "requester run:", err)
		return runExitPolicy
	}
	out, err := policy.Run(ctx, command, input)
	if err != nil {
		fmt.Fprintln(env.stderr, "requester run:", err)
		return runExitPolicy
	}
	if rf.validateSettings {
		var resp settingsResponse
		if err := decodeResponse(out, &resp); err != nil || resp.Valid == nil {
			fmt.Fprintf(env.stderr, "requester run: policy %s validate-settings: %s is not a settings validation response\n", policyPath, snippet(out))
			return runExitPolicy
		}
		resp.print(env.stdout, output)
	} else {
		var resp validationResponse
		if err := decodeResponse(out, &resp); err != nil || resp.Accepted == nil {
			fmt.Fprintf(env.stderr, "requester run: policy %s validate: %s is not a validation response\n", policyPath, snippet(out))
			return runExitPolicy
		}
		resp.print(env.stdout, output)
	}
	if err := calls.unreachable(); err != nil {
		fmt.Fprintf(env.stderr, "requester run: the policy decided without the fleet: %v\n", err)
		return runExitUnreachable
	}
	env.reportRetries("run")
	return exitOK
}

// defaultCacheDir is regcap's folder in the user's cache folder, or none
// when there is no such folder.
func defaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "regcap", "requester-run")
}

// hostCalls answers the policy's kubewarden/oci calls through the fleet
// and keeps the first that did not reach it (anything but an error reply),
// since the policy then decided on an error of ours, not the registry's.
type hostCalls struct {
	oci   wasihost.HostCallFunc
	mu    sync.Mutex
	first error
}

func (h *hostCalls) call(ctx context.Context, binding, namespace, operation string, payload []byte) ([]byte, error) {
	b, err := h.oci(ctx, binding, namespace, operation, payload)
	var ce *contract.Error
	if err != nil && !errors.As(err, &ce) {
		h.mu.Lock()
		if h.first == nil {
			h.first = fmt.Errorf("%s/%s/%s: %w", binding, namespace, operation, err)
		}
		h.mu.Unlock()
	}
	return b, err
}

func (h *hostCalls) unreachable() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.first
}

// settings returns the settings document: --settings-json, the file at
// --settings-path, or {}.
func (rf *runFlags) settings(stdin io.Reader) (json.RawMessage, error) {
	raw, what := []byte("{}"), "--settings-json"
	switch {
	case rf.settingsJSON != "":
		raw = []byte(rf.settingsJSON)
	case rf.settingsPath != "":
		what = "--settings-path " + rf.settingsPath
		var err error
		if raw, err = readInput(rf.settingsPath, stdin); err != nil {
			return nil, fmt.Errorf("--settings-path: %w", err)
		}
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' || !json.Valid(raw) {
		return nil, fmt.Errorf("%s: not a JSON object", what)
	}
	return raw, nil
}

// admissionRequest returns the request object of an AdmissionReview, or
// raw itself when it is the request object already, as kwctl accepts.
func admissionRequest(raw []byte) (json.RawMessage, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, errors.New("not a JSON object (want an AdmissionReview or its request)")
	}
	if req, ok := doc["request"]; ok {
		if r := bytes.TrimSpace(req); len(r) == 0 || r[0] != '{' {
			return nil, errors.New(`"request" is not an object`)
		}
		return req, nil
	}
	if _, ok := doc["uid"]; !ok {
		if _, ok := doc["object"]; !ok {
			return nil, errors.New(`neither an AdmissionReview (no "request") nor an admission request (no "uid" nor "object")`)
		}
	}
	return bytes.TrimSpace(raw), nil
}

// readInput reads path, or stdin for "-", up to maxRequestBytes.
func readInput(path string, stdin io.Reader) ([]byte, error) {
	if path == "-" {
		return readAtMost(stdin, "stdin", maxRequestBytes)
	}
	return readFile(path, maxRequestBytes)
}

func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAtMost(f, path, limit)
}

func readAtMost(r io.Reader, name string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}

// decodeResponse decodes a policy's response strictly enough to tell a
// response from other JSON: an object, with the field's type right.
func decodeResponse(out []byte, v any) error {
	if b := bytes.TrimSpace(out); len(b) == 0 || b[0] != '{' {
		return errors.New("not an object")
	}
	return json.Unmarshal(out, v)
}

// validationResponse is Kubewarden's ValidationResponse.
type validationResponse struct {
	Accepted      *bool           `json:"accepted"`
	Message       *string         `json:"message,omitempty"`
	Code          *uint16         `json:"code,omitempty"`
	MutatedObject json.RawMessage `json:"mutated_object,omitempty"`
	// Newer policies may also set these; passed on as they are.
	AuditAnnotations json.RawMessage `json:"audit_annotations,omitempty"`
	Warnings         json.RawMessage `json:"warnings,omitempty"`
}

func (r *validationResponse) print(w io.Writer, output string) {
	for _, raw := range []*json.RawMessage{&r.MutatedObject, &r.AuditAnnotations, &r.Warnings} {
		if string(*raw) == "null" {
			*raw = nil
		}
	}
	if output == "json" {
		writeResponse(w, r)
		return
	}
	line := "rejected"
	if *r.Accepted {
		line = "accepted"
	}
	if len(r.MutatedObject) > 0 {
		line += ", mutated"
	}
	if r.Code != nil {
		line += fmt.Sprintf(" (code %d)", *r.Code)
	}
	if r.Message != nil && *r.Message != "" {
		line += ": " + *r.Message
	}
	fmt.Fprintln(w, line)
}

// settingsResponse is Kubewarden's SettingsValidationResponse.
type settingsResponse struct {
	Valid   *bool   `json:"valid"`
	Message *string `json:"message,omitempty"`
}

func (r *settingsResponse) print(w io.Writer, output string) {
	if output == "json" {
		writeResponse(w, r)
		return
	}
	line := "invalid"
	if *r.Valid {
		line = "valid"
	}
	if r.Message != nil && *r.Message != "" {
		line += ": " + *r.Message
	}
	fmt.Fprintln(w, line)
}

// writeResponse writes v as indented JSON, leaving <, > and & as the
// policy wrote them.
func writeResponse(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// snippet shortens a policy's output for an error message.
func snippet(b []byte) string {
	const n = 200
	b = bytes.TrimSpace(b)
	if len(b) > n {
		return fmt.Sprintf("%q…", b[:n])
	}
	return fmt.Sprintf("%q", b)
}
