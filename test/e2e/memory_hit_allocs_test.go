package e2e

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// maxRoundTripHitAllocs is what a memory hit allocates end to end today,
// in one process: the Go client's call, the NATS server routing the
// request and the reply, and the worker answering from memory. The NATS
// echo of BenchmarkHitPath, with no headers, allocates 20. A change that
// makes hits allocate more fails TestMemoryHitAllocsEndToEnd; one that
// makes them allocate less lowers this. (It was 54 before the
// acknowledgement moved from a request header to the reply subject, the
// client stopped allocating its subject, its timer and a failed
// Regcap-Age parse per call, and the worker its Regcap-Cache value.)
const maxRoundTripHitAllocs = 37

// TestMemoryHitAllocsEndToEnd: a digest request answered from a worker's
// memory, through a NATS server, allocates at most maxRoundTripHitAllocs
// times, counting every goroutine of the process (the calls are one at a
// time, so every allocation measured is the call's).
func TestMemoryHitAllocsEndToEnd(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	reg.PushImage(t, "allocs", "v1", testenv.OCIManifest, "linux/amd64")
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), Logger: zap.NewNop(),
		Config: worker.Config{CacheTTL: time.Hour}})
	cli := testenv.Client(t, ns.ClientURL())
	payload := []byte(`"` + reg.Ref("allocs", "v1") + `"`)
	call := func() {
		r, err := cli.Call(context.Background(), contract.ManifestDigest, payload)
		if err != nil || r.Cache != contract.Hit && r.Cache != contract.Miss {
			t.Fatalf("call: %+v %v", r, err)
		}
	}
	call() // the miss that fills the memory tier
	for range 100 {
		call() // warm pools and buffers
	}
	limit := float64(maxRoundTripHitAllocs)
	if raceEnabled {
		// The race detector's sync.Pool drops a quarter of what is put
		// back: the client's pooled timer is made again now and then.
		limit++
	}
	if n := testing.AllocsPerRun(1000, call); n > limit {
		t.Errorf("a memory hit allocates %v times end to end, want at most %v", n, limit)
	}
}
