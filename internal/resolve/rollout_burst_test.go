package resolve

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// rollout sends callers concurrent requests, released together, for
// images no worker has fetched, spread over the fleet's resolvers, and
// returns each caller's latency. The registry answers as it comes: no
// gate holds it, so that the fleet lock, the flights and the reply
// before the store race as they do in a real rollout.
func (f *fleet) rollout(t testing.TB, images []string, callers int) []time.Duration {
	t.Helper()
	start := make(chan struct{})
	lat := make([]time.Duration, callers)
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		r, img := f.res[i%len(f.res)], images[i%len(images)]
		wg.Go(func() {
			<-start
			t0 := time.Now()
			_, err := r.Answer(context.Background(), request(contract.ManifestDigest, img))
			lat[i] = time.Since(t0)
			if err != nil {
				errs <- fmt.Errorf("%s: %w", img, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return lat
}

// pushRollout pushes n new images and returns their references.
func (f *fleet) pushRollout(t testing.TB, repo string, n int) []string {
	var images []string
	for i := range n {
		tag := fmt.Sprint("v", i)
		f.reg.PushImage(t, repo, tag, testenv.OCIManifest, "linux/amd64")
		images = append(images, f.reg.Ref(repo, tag))
	}
	return images
}

// TestRolloutBurstOneFetchPerImage: 500 concurrent callers over 3
// workers sharing a Redis, asking for 20 images nobody fetched yet, cost
// exactly 20 registry requests: each worker's flights and the fleet lock
// leave one fetch per image, whoever arrives first.
func TestRolloutBurstOneFetchPerImage(t *testing.T) {
	f := startFleet(t, 3, 0)
	images := f.pushRollout(t, "rollout/app", 20)
	f.reg.ResetCounts()
	f.rollout(t, images, 500)
	if n := f.reg.Count("HEAD", "manifest"); n != 20 {
		t.Fatalf("%d registry HEADs for 20 new images asked by 500 callers over 3 workers, want 20", n)
	}
	if n := f.reg.Count("GET", "manifest"); n != 0 {
		t.Fatalf("%d manifest GETs for manifest_digest, want none", n)
	}
}

// BenchmarkRolloutBurst reports a rollout's latency against a single
// fetch's: p99 of 500 callers over 3 workers asking for 20 new images
// (burst-p99-ms), of one caller asking for one new image at a time
// (single-p99-ms), and their difference in single-fetch times
// (excess-fetches: the goal is at most 1), with the registry requests per
// rollout (fetches/op, the goal 20), and the process's CPU per rollout and
// per single fetch (burst-cpu-ms, single-cpu-ms) and in cores while a
// rollout ran (burst-cores): a burst that keeps the cores busy is bound
// by CPU, not by the fleet's waits:
//
//	go test -run '^$' -bench RolloutBurst -count 3 ./internal/resolve/
func BenchmarkRolloutBurst(b *testing.B) {
	f := &fleet{reg: testenv.StartRegistry(b), redis: testenv.StartRedis(b)}
	for range 3 {
		f.add(b, 0)
	}
	var single []time.Duration
	var singleCPU time.Duration
	for i := range 50 {
		img := f.pushRollout(b, fmt.Sprint("single/app", i), 1)[0]
		t0, c0 := time.Now(), processCPU(b)
		if _, err := f.res[i%3].Answer(context.Background(), request(contract.ManifestDigest, img)); err != nil {
			b.Fatal(err)
		}
		single = append(single, time.Since(t0))
		singleCPU += processCPU(b) - c0
	}
	var burst []time.Duration
	fetches := 0
	n := 0
	var cpu, wall time.Duration
	for b.Loop() {
		b.StopTimer()
		images := f.pushRollout(b, fmt.Sprint("burst/app", n), 20)
		n++
		f.reg.ResetCounts()
		c0, w0 := processCPU(b), time.Now()
		b.StartTimer()
		burst = append(burst, f.rollout(b, images, 500)...)
		b.StopTimer()
		cpu, wall = cpu+processCPU(b)-c0, wall+time.Since(w0)
		fetches += f.reg.Count("HEAD", "manifest")
		b.StartTimer()
	}
	sp, bp := p99(single), p99(burst)
	b.ReportMetric(float64(sp)/1e6, "single-p99-ms")
	b.ReportMetric(float64(bp)/1e6, "burst-p99-ms")
	// The process's CPU (resolvers, callers and the in-process registry;
	// not Redis) per rollout, and in cores while it ran: near the
	// machine's cores, the burst is bound by CPU, not by the fleet's
	// waits.
	b.ReportMetric(float64(cpu)/float64(n)/1e6, "burst-cpu-ms")
	b.ReportMetric(float64(singleCPU)/50/1e6, "single-cpu-ms")
	b.ReportMetric(float64(cpu)/float64(max(wall, 1)), "burst-cores")
	b.ReportMetric(float64(bp-sp)/float64(max(sp, 1)), "excess-fetches")
	b.ReportMetric(float64(fetches)/float64(n), "fetches/op")
}

func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)*99)/100]
}

// processCPU is the user and system CPU time this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
