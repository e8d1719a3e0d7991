package kubewarden

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/client/wasihost"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// BenchmarkEvaluation measures one evaluation of the SDK-built policy on
// a Pod of three images (nine host calls), each instantiating the
// compiled policy afresh as wasihost does (compiling is outside the loop):
//
//   - fleet-vs-memory: each iteration evaluates twice, in alternating
//     order: once with the host calls answered by the fleet from its cache
//     (two workers, Redis, over NATS on loopback) and once with the same
//     answers, recorded from the fleet beforehand, given back from a map
//     in process. It reports both times per evaluation and their ratio,
//     measured side by side so that a busy machine slows both alike;
//   - no-calls: a Pod with no images, so no host call: what instantiating
//     the policy and running it cost;
//   - raw-guest: client/wasihost's raw-ABI test guest, no call: what
//     instantiating a plain Go wasip1 program costs, without the SDK;
//   - host-calls: the nine calls alone, through the fleet, no policy.
func BenchmarkEvaluation(b *testing.B) {
	f := startFleet(b, worker.Config{})
	im := f.pushImages(b)
	req := validationRequest(pod(nil, im.NonRoot.Ref, im.Index.Ref, im.Private.Ref), []byte(`{"pin_tags":true}`))
	empty := validationRequest(pod(nil), nil)
	ctx := context.Background()

	// The fleet's answers, recorded as the policy asks for them.
	fleet := client.New(testenv.Connect(b, f.NATSURL), client.WithTimeout(30*time.Second))
	type call struct{ operation, payload string }
	var mu sync.Mutex
	answers := map[call][]byte{}
	var calls []call
	record := func(ctx context.Context, binding, namespace, operation string, payload []byte) ([]byte, error) {
		a, err := fleet.HostCall(ctx, binding, namespace, operation, payload)
		if err == nil {
			mu.Lock()
			answers[call{operation, string(payload)}] = a
			calls = append(calls, call{operation, string(payload)})
			mu.Unlock()
		}
		return a, err
	}
	want, err := compile(b, newHost(b, record)).Validate(ctx, req)
	testenv.Must(b, err, "recording the fleet's answers")
	if len(answers) != 9 {
		b.Fatalf("recorded %d answers, want 9 (3 images × 3 capabilities)", len(answers))
	}
	inMemory := func(_ context.Context, _, _, operation string, payload []byte) ([]byte, error) {
		a, ok := answers[call{operation, string(payload)}]
		if !ok {
			return nil, fmt.Errorf("no recorded answer for %s %s", operation, payload)
		}
		return a, nil
	}
	viaFleet := compile(b, newHost(b, fleet.HostCall))
	fromMemory := compile(b, newHost(b, inMemory))
	eval := func(b *testing.B, p *wasihost.Policy, input []byte, check bool) time.Duration {
		start := time.Now()
		out, err := p.Validate(ctx, input)
		d := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if check && string(out) != string(want) {
			b.Fatalf("decided %s, want %s", out, want)
		}
		return d
	}

	b.Run("fleet-vs-memory", func(b *testing.B) {
		var fleetTime, memTime time.Duration
		n := 0
		for b.Loop() {
			if n%2 == 0 {
				fleetTime += eval(b, viaFleet, req, true)
				memTime += eval(b, fromMemory, req, true)
			} else {
				memTime += eval(b, fromMemory, req, true)
				fleetTime += eval(b, viaFleet, req, true)
			}
			n++
		}
		b.ReportMetric(float64(fleetTime.Microseconds())/float64(n)/1000, "fleet-ms/eval")
		b.ReportMetric(float64(memTime.Microseconds())/float64(n)/1000, "memory-ms/eval")
		b.ReportMetric(float64(fleetTime)/float64(memTime), "fleet/memory")
	})
	b.Run("no-calls", func(b *testing.B) {
		for b.Loop() {
			eval(b, fromMemory, empty, false)
		}
	})
	b.Run("raw-guest", func(b *testing.B) {
		raw := compile(b, newHost(b, inMemory), rawGuest(b))
		for b.Loop() {
			eval(b, raw, []byte(`{}`), false)
		}
	})
	b.Run("host-calls", func(b *testing.B) {
		for b.Loop() {
			for _, c := range calls {
				if _, err := fleet.HostCall(ctx, "kubewarden", "oci", c.operation, []byte(c.payload)); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// rawGuest builds client/wasihost's raw-ABI test guest.
func rawGuest(b *testing.B) []byte {
	b.Helper()
	out := filepath.Join(b.TempDir(), "guest.wasm")
	cmd := exec.Command("go", "build", "-o", out, "../../client/wasihost/testdata/guest")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building the raw guest: %v\n%s", err, msg)
	}
	wasm, err := os.ReadFile(out)
	testenv.Must(b, err, "reading the raw guest")
	return wasm
}
