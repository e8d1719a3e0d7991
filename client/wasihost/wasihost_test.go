package wasihost_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/client/wasihost"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
)

// guestWasm builds testdata/guest with GOOS=wasip1 into dir and returns
// the module.
func guestWasm(dir string) ([]byte, error) {
	out := filepath.Join(dir, "guest.wasm")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/guest")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building testdata/guest: %v\n%s", err, b)
	}
	return os.ReadFile(out)
}

var (
	buildOnce sync.Once
	built     []byte
	buildErr  error
	// cache shares compiled code between the tests' Hosts.
	cache = wazero.NewCompilationCache()
)

// guest returns the test guest, built once per test binary.
func guest(t *testing.T) []byte {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wasihost-guest")
		if err != nil {
			buildErr = err
			return
		}
		defer os.RemoveAll(dir)
		built, buildErr = guestWasm(dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// fleet is a registry with one image and a worker on a NATS server.
type fleet struct {
	reg    *testenv.Registry
	image  testenv.Image
	ref    string
	client *client.Client
}

func startFleet(t *testing.T) *fleet {
	t.Helper()
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "app", "v1", testenv.OCIManifest, "linux/amd64")
	ns := testenv.StartNATS(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	return &fleet{reg: reg, image: img, ref: reg.Ref("app", "v1"), client: testenv.Client(t, ns.ClientURL())}
}

// compile starts a Host with opts and compiles the guest in it.
func compile(t *testing.T, calls wasihost.HostCallFunc, opts ...wasihost.Option) *wasihost.Policy {
	t.Helper()
	ctx := context.Background()
	h, err := wasihost.New(ctx, calls, append([]wasihost.Option{wasihost.WithCompilationCache(cache)}, opts...)...)
	testenv.Must(t, err, "new host")
	t.Cleanup(func() { _ = h.Close(ctx) })
	p, err := h.Compile(ctx, "guest.wasm", guest(t))
	testenv.Must(t, err, "compiling the guest")
	return p
}

type call struct {
	Binding   string `json:"binding"`
	Namespace string `json:"namespace"`
	Operation string `json:"operation"`
	Payload   string `json:"payload"`
}

type result struct {
	Status uint32 `json:"status"`
	Answer string `json:"answer"`
}

type response struct {
	Accepted bool     `json:"accepted"`
	Message  string   `json:"message"`
	Calls    []result `json:"calls"`
}

func oci(op, image string) call {
	return call{"kubewarden", "oci", op, `"` + image + `"`}
}

// validate runs the guest's validate making calls, and decodes its response.
func validate(t *testing.T, p *wasihost.Policy, calls ...call) response {
	t.Helper()
	in, _ := json.Marshal(map[string]any{"calls": calls})
	out, err := p.Validate(context.Background(), in)
	testenv.Must(t, err, "validate")
	var r response
	testenv.Must(t, json.Unmarshal(out, &r), "decoding %s", out)
	if !r.Accepted || r.Message != "validate" || len(r.Calls) != len(calls) {
		t.Fatalf("response %s for %d calls", out, len(calls))
	}
	return r
}

func TestHostCalls(t *testing.T) {
	f := startFleet(t)
	missing := f.reg.Ref("app", "absent")
	var (
		mu   sync.Mutex
		seen []string
	)
	handler := func(ctx context.Context, binding, namespace, operation string, payload []byte) ([]byte, error) {
		mu.Lock()
		seen = append(seen, binding+"/"+namespace+"/"+operation+" "+string(payload))
		mu.Unlock()
		if operation == "v1/fail" {
			return nil, errors.New("handler says no")
		}
		return []byte(`{"from":"handler"}`), nil
	}
	bare := compile(t, f.client.HostCall)
	withHandler := compile(t, f.client.HostCall, wasihost.WithHandler(handler))

	digest := `{"digest":"` + f.image.Digest + `"}`
	notFound := func(a string) bool { return strings.Contains(a, "404") }
	for _, tc := range []struct {
		name   string
		policy *wasihost.Policy
		calls  []call
		want   []result // an empty answer: the registry's 404
	}{
		{name: "manifest_digest is the registry's digest", policy: bare,
			calls: []call{oci("v1/manifest_digest", f.ref)}, want: []result{{0, digest}}},
		{name: "oci_manifest is the registry's manifest byte for byte", policy: bare,
			calls: []call{oci("v1/oci_manifest", f.ref)}, want: []result{{0, string(f.image.Manifest)}}},
		{name: "oci_manifest_config", policy: bare,
			calls: []call{oci("v1/oci_manifest_config", f.ref)}, want: []result{{0, string(testenv.ConfigReply(f.image))}}},
		{name: "a missing image is an error the guest reads", policy: bare,
			calls: []call{oci("v1/manifest_digest", missing)}, want: []result{{1, ""}}},
		{name: "each call's answer replaces the last on stdin", policy: bare,
			calls: []call{oci("v1/manifest_digest", missing), oci("v1/manifest_digest", f.ref), oci("v1/manifest_digest", f.ref)},
			want:  []result{{1, ""}, {0, digest}, {0, digest}}},
		{name: "no handler: a clear error", policy: bare,
			calls: []call{{"kubewarden", "net", "v1/dns_lookup_host", `"example.com"`}},
			want:  []result{{1, "wasihost: no handler for host call kubewarden/net/v1/dns_lookup_host"}}},
		{name: "no handler: an oci operation regcap does not serve", policy: bare,
			calls: []call{{"kubewarden", "oci", "v2/verify", `{}`}},
			want:  []result{{1, "wasihost: no handler for host call kubewarden/oci/v2/verify"}}},
		{name: "the handler answers the rest", policy: withHandler,
			calls: []call{{"kubewarden", "net", "v1/dns_lookup_host", `"example.com"`}, oci("v1/manifest_digest", f.ref)},
			want:  []result{{0, `{"from":"handler"}`}, {0, digest}}},
		{name: "the handler's error", policy: withHandler,
			calls: []call{{"other", "ns", "v1/fail", ``}},
			want:  []result{{1, "handler says no"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := validate(t, tc.policy, tc.calls...)
			for i, got := range r.Calls {
				w := tc.want[i]
				if got.Status != w.Status {
					t.Errorf("call %d (%v): status %d, want %d; answer %q", i, tc.calls[i], got.Status, w.Status, got.Answer)
				}
				if w.Answer == "" && !notFound(got.Answer) {
					t.Errorf("call %d: answer %q, want the registry's 404", i, got.Answer)
				} else if w.Answer != "" && got.Answer != w.Answer {
					t.Errorf("call %d: answer %q, want %q", i, got.Answer, w.Answer)
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{`kubewarden/net/v1/dns_lookup_host "example.com"`, "other/ns/v1/fail "}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("the handler saw %q, want %q", seen, want)
	}
}

// noCalls answers nothing: for guests that make no host call.
func noCalls(context.Context, string, string, string, []byte) ([]byte, error) {
	return nil, errors.New("no host calls expected")
}

func TestFailures(t *testing.T) {
	p := compile(t, noCalls, wasihost.WithTimeout(3*time.Second), wasihost.WithMemoryLimit(64<<20))
	for _, tc := range []struct {
		name, input string
		kind        error
		text        string // in the error's message
		code        uint32
	}{
		{"a guest that loops forever", `{"loop":true}`, wasihost.ErrTimeout, "policy guest.wasm validate: timed out: stopped after 3", 0},
		{"a guest writing something that is not JSON", `{"raw":"all good!"}`, wasihost.ErrNotJSON, `policy guest.wasm validate: response is not JSON: response "all good!" is not JSON`, 0},
		{"a guest that exits 3", `{"exit":3}`, wasihost.ErrExit, "policy guest.wasm validate: exited with an error: exit code 3", 3},
		{"a guest that panics", `not json at all`, wasihost.ErrExit, "panic: invalid character", 2},
		{"a guest beyond the memory limit", `{"grow":100000000}`, wasihost.ErrExit, "out of memory", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			out, err := p.Validate(context.Background(), []byte(tc.input))
			var we *wasihost.Error
			if !errors.As(err, &we) || !errors.Is(err, tc.kind) {
				t.Fatalf("got %s, %v; want a *wasihost.Error of kind %v", out, err, tc.kind)
			}
			if we.Policy != "guest.wasm" || we.Command != "validate" || we.ExitCode != tc.code || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q (exit code %d), want it to name the policy, validate, exit code %d and %q", err, we.ExitCode, tc.code, tc.text)
			}
			t.Logf("%v after %v", err, time.Since(start).Round(time.Millisecond))
		})
	}
	// The Policy is still good after all that.
	validate(t, p)
}

// trap is (module (func (export "_start") unreachable)).
var trap = []byte{
	0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
	0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: func() -> ()
	0x03, 0x02, 0x01, 0x00, // function 0 of type 0
	0x07, 0x0a, 0x01, 0x06, '_', 's', 't', 'a', 'r', 't', 0x00, 0x00, // export _start
	0x0a, 0x05, 0x01, 0x03, 0x00, 0x00, 0x0b, // body: unreachable
}

func TestTrapAndCompileErrors(t *testing.T) {
	ctx := context.Background()
	h, err := wasihost.New(ctx, noCalls)
	testenv.Must(t, err, "new host")
	defer h.Close(ctx)

	p, err := h.Compile(ctx, "trap.wasm", trap)
	testenv.Must(t, err, "compiling")
	_, err = p.Validate(ctx, []byte(`{}`))
	if !errors.Is(err, wasihost.ErrTrap) || !strings.Contains(err.Error(), "policy trap.wasm validate: trapped: ") || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("trap: %v", err)
	}

	_, err = h.Compile(ctx, "junk.wasm", []byte("not wasm"))
	var we *wasihost.Error
	if !errors.As(err, &we) || !errors.Is(err, wasihost.ErrCompile) || we.Policy != "junk.wasm" {
		t.Errorf("compiling junk: %v", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = compile(t, noCalls).Validate(cctx, []byte(`{"loop":true}`))
	if !errors.Is(err, wasihost.ErrCanceled) {
		t.Errorf("canceled: %v", err)
	}
}

// The guest gets its argument, and no environment, files or directory.
func TestSandbox(t *testing.T) {
	p := compile(t, noCalls)
	out, err := p.ValidateSettings(context.Background(), []byte(`{"probe":true}`))
	testenv.Must(t, err, "validate-settings")
	var got struct {
		Env     []string `json:"env"`
		Args    []string `json:"args"`
		ReadDir bool     `json:"readdir"`
		Getwd   bool     `json:"getwd"`
	}
	testenv.Must(t, json.Unmarshal(out, &got), "decoding %s", out)
	if len(got.Env) != 0 || strings.Join(got.Args, " ") != "guest.wasm validate-settings" || !got.ReadDir {
		t.Errorf("the guest sees %s", out)
	}
	r, err := p.ValidateSettings(context.Background(), []byte(`{}`))
	if err != nil || !strings.Contains(string(r), `"message":"validate-settings"`) {
		t.Errorf("validate-settings: %s, %v", r, err)
	}
}

// One compiled policy serves many evaluations, one after the other and
// at once, each with its own stdin.
func TestCompileOnceReuse(t *testing.T) {
	f := startFleet(t)
	other := f.reg.PushImage(t, "other", "v2", testenv.DockerManifest, "linux/arm64")
	otherRef := f.reg.Ref("other", "v2")
	p := compile(t, f.client.HostCall)

	validate(t, p, oci("v1/manifest_digest", f.ref)) // warm the fleet's cache
	const sequential = 10
	start := time.Now()
	for range sequential {
		r := validate(t, p, oci("v1/manifest_digest", f.ref))
		if r.Calls[0].Answer != `{"digest":"`+f.image.Digest+`"}` {
			t.Fatalf("answer %q", r.Calls[0].Answer)
		}
	}
	t.Logf("one evaluation (instantiate + run + one host call answered by the fleet): %v", (time.Since(start) / sequential).Round(time.Microsecond))

	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			ref, want := f.ref, f.image.Digest
			if i%2 == 1 {
				ref, want = otherRef, other.Digest
			}
			in, _ := json.Marshal(map[string]any{"calls": []call{oci("v1/manifest_digest", ref)}})
			out, err := p.Validate(context.Background(), in)
			if err != nil {
				t.Error(err)
				return
			}
			var r response
			if err := json.Unmarshal(out, &r); err != nil || len(r.Calls) != 1 || r.Calls[0].Answer != `{"digest":"`+want+`"}` {
				t.Errorf("evaluation %d: %s, %v", i, out, err)
			}
		})
	}
	wg.Wait()
}

// BenchmarkValidate measures one evaluation (instantiate + run) of the
// guest on one compiled policy: without a host call, and with one
// v1/manifest_digest answered by the fleet from its cache.
func BenchmarkValidate(b *testing.B) {
	reg := testenv.StartRegistry(b)
	reg.PushImage(b, "app", "v1", testenv.OCIManifest, "linux/amd64")
	ns := testenv.StartNATS(b)
	testworker.Start(b, testworker.Config{NATSURL: ns.ClientURL()})
	c := testenv.Client(b, ns.ClientURL())
	dir := b.TempDir()
	wasm, err := guestWasm(dir)
	testenv.Must(b, err, "building the guest")
	ctx := context.Background()
	h, err := wasihost.New(ctx, c.HostCall)
	testenv.Must(b, err, "new host")
	defer h.Close(ctx)
	p, err := h.Compile(ctx, "guest.wasm", wasm)
	testenv.Must(b, err, "compiling")
	for _, bc := range []struct {
		name  string
		calls []call
	}{
		{"no host call", nil},
		{"one fleet hit", []call{oci("v1/manifest_digest", reg.Ref("app", "v1"))}},
	} {
		in, _ := json.Marshal(map[string]any{"calls": bc.calls})
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := p.Validate(ctx, in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
