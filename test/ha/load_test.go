// Package ha proves that a fleet keeps its promises while the nodes of
// the NATS and Redis it runs on fail: three workers under a steady load,
// one node killed with SIGKILL, then failed requests, client retries and
// upstream fetches per key counted.
package ha

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// repo holds the images the load asks for, one tag per key.
const repo = "ha/app"

// fleet is three workers sharing one NATS and one Redis deployment, and
// the registry they fetch from.
type fleet struct {
	reg     *testenv.Registry
	images  []string
	tags    []string
	workers []*testworker.Worker
	// logs are the workers' log lines, to read when they saw an outage
	// begin and end.
	logs []*observer.ObservedLogs
}

// workerSpec is one worker's connections.
type workerSpec struct {
	NATSURL, RedisURL string
}

// startFleet pushes n images and starts one worker per spec. cfg is the
// rest of every worker's configuration.
func startFleet(t *testing.T, n int, specs []workerSpec, cfg worker.Config) *fleet {
	t.Helper()
	f := &fleet{reg: testenv.StartRegistry(t)}
	for i := range n {
		tag := fmt.Sprintf("v%d", i)
		f.reg.PushImage(t, repo, tag, testenv.OCIManifest, "linux/amd64")
		f.tags = append(f.tags, tag)
		f.images = append(f.images, f.reg.Ref(repo, tag))
	}
	f.reg.ResetCounts()
	for _, s := range specs {
		core, logs := observer.New(zap.InfoLevel)
		log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core()))
		c := cfg
		c.RedisURL = s.RedisURL
		f.workers = append(f.workers, testworker.Start(t, testworker.Config{NATSURL: s.NATSURL, Logger: log, Config: c}))
		f.logs = append(f.logs, logs)
	}
	return f
}

// load asks the fleet for a new key every step, from every client at
// once (so that the fleet has one fetch to share on each new key), and
// for an older key at random in between (so that most answers are
// hits read from Redis).
type load struct {
	f      *fleet
	start  time.Time
	step   time.Duration
	cancel context.CancelFunc
	wg     sync.WaitGroup

	requests, failed atomic.Int64
	slowest          atomic.Int64 // the longest a request took, in ns
	mu               sync.Mutex
	failures         []string
	// asked is when each key was first asked for.
	asked map[int]time.Time
}

// run starts the load; stop ends it.
func (f *fleet) run(t *testing.T, clients []*client.Client, step time.Duration) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{f: f, start: time.Now(), step: step, cancel: cancel, asked: map[int]time.Time{}}
	for ci, c := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(step / 2)
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				k := l.newest()
				if k >= len(f.images) {
					return
				}
				if n%2 == 1 && k > 0 {
					k = (k*7 + ci*13 + n) % k // an older key: a hit
				}
				l.ask(c, k)
			}
		}()
	}
	return l
}

// newest is the index of the key the load is on now.
func (l *load) newest() int { return int(time.Since(l.start) / l.step) }

func (l *load) ask(c *client.Client, k int) {
	l.mu.Lock()
	if _, ok := l.asked[k]; !ok {
		l.asked[k] = time.Now()
	}
	l.mu.Unlock()
	l.requests.Add(1)
	// The admission webhook's own budget: an answer later than this is
	// a failure to the user even if it comes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Image(ctx, contract.OCIManifest, l.f.images[k])
	for took := int64(time.Since(start)); ; {
		if s := l.slowest.Load(); took <= s || l.slowest.CompareAndSwap(s, took) {
			break
		}
	}
	if err != nil {
		l.failed.Add(1)
		var ce *contract.Error
		what := err.Error()
		if errors.As(err, &ce) {
			what = fmt.Sprintf("%d %s", ce.Code, ce.Message)
		}
		l.mu.Lock()
		l.failures = append(l.failures, fmt.Sprintf("%s: %s: %s", time.Now().Format("15:04:05.000"), l.f.tags[k], what))
		l.mu.Unlock()
	}
}

// stop ends the load and waits for the requests in flight.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// counts is the number of manifest GETs of each key so far.
func (l *load) counts() map[int]int {
	c := make(map[int]int, len(l.f.tags))
	for k, tag := range l.f.tags {
		c[k] = l.f.reg.CountManifest("GET", repo, tag)
	}
	return c
}

// window is one node kill: when the node was killed, when the fleet had
// recovered as the workers saw it, and the fetch counts at both times.
type window struct {
	killed, recovered  time.Time
	atKill, atRecovery map[int]int
}

// fetches are the upstream fetches of one run, split by the window.
type fetches struct {
	// before and after are the keys first asked for well before the
	// kill and well after the recovery, and their fetches in that phase.
	keysBefore, fetchesBefore int
	keysAfter, fetchesAfter   int
	// during is the fetches made inside the window, of any key; refetched
	// those after it of keys asked before it (cache writes lost in the
	// failover).
	during, refetched int
	// extra lists the keys outside the window not fetched exactly once.
	extra []string
}

// margin is how close to the window a key's first request may be and
// still count as outside it: fetches under way at either end.
const margin = time.Second

func (l *load) fetches(w window) fetches {
	final := l.counts()
	l.mu.Lock()
	defer l.mu.Unlock()
	var fs fetches
	for k, n := range final {
		fs.during += w.atRecovery[k] - w.atKill[k]
		at, asked := l.asked[k]
		switch {
		case !asked:
		case at.Before(w.killed.Add(-margin)):
			fs.keysBefore++
			fs.fetchesBefore += w.atKill[k]
			fs.refetched += n - w.atRecovery[k]
			if w.atKill[k] != 1 {
				fs.extra = append(fs.extra, fmt.Sprintf("%s: %d before the kill", l.f.tags[k], w.atKill[k]))
			}
		case at.After(w.recovered.Add(margin)):
			fs.keysAfter++
			fs.fetchesAfter += n
			if n != 1 {
				fs.extra = append(fs.extra, fmt.Sprintf("%s: %d after the recovery", l.f.tags[k], n))
			}
		default:
			fs.refetched += n - w.atRecovery[k]
		}
	}
	sort.Strings(fs.extra)
	return fs
}

func perKey(fetches, keys int) float64 {
	if keys == 0 {
		return 0
	}
	return float64(fetches) / float64(keys)
}

// report checks the promises of one node kill and logs its figures: no
// failed request, and one fetch per key outside the failover window.
func (l *load) report(t *testing.T, what string, w window, retries int64) {
	t.Helper()
	fs := l.fetches(w)
	t.Logf("%s: %d requests, %d failed, %d client retries, slowest request %v; failover took %v as the workers saw it; fetches per key %.2f before (%d keys) and %.2f after (%d keys); %d fetches inside the window, %d refetches after it",
		what, l.requests.Load(), l.failed.Load(), retries, time.Duration(l.slowest.Load()).Round(time.Millisecond), w.recovered.Sub(w.killed).Round(time.Millisecond),
		perKey(fs.fetchesBefore, fs.keysBefore), fs.keysBefore, perKey(fs.fetchesAfter, fs.keysAfter), fs.keysAfter, fs.during, fs.refetched)
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed:\n%s", n, l.requests.Load(), strings.Join(l.failures, "\n"))
	}
	if len(fs.extra) > 0 {
		t.Errorf("keys outside the failover window not fetched exactly once: %s", strings.Join(fs.extra, ", "))
	}
	if fs.keysBefore < 20 || fs.keysAfter < 20 {
		t.Errorf("%d keys before the window and %d after: the load is too short to tell", fs.keysBefore, fs.keysAfter)
	}
}

// recovery waits until each worker's last line since since about the
// dependency is up (and not down) and has been for a while, and returns
// when the last of them said up. A worker that never logged down did
// not see the outage and does not count.
func (f *fleet) recovery(t *testing.T, since time.Time, down, up string) time.Time {
	t.Helper()
	var last time.Time
	spans := make([]string, len(f.logs))
	testenv.Eventually(t, "the workers to see "+up, func() bool {
		last = time.Time{}
		for i, l := range f.logs {
			var firstDown, downAt, upAt time.Time
			for _, e := range l.All() {
				switch {
				case e.Time.Before(since):
				case strings.Contains(e.Message, down):
					if firstDown.IsZero() {
						firstDown = e.Time
					}
					downAt = e.Time
				case strings.Contains(e.Message, up):
					upAt = e.Time
				}
			}
			spans[i] = "did not see it"
			if downAt.IsZero() {
				continue
			}
			if upAt.Before(downAt) || time.Since(upAt) < 2*time.Second {
				return false
			}
			spans[i] = fmt.Sprintf("first error %v after the kill, back %v after it",
				firstDown.Sub(since).Round(time.Millisecond), upAt.Sub(since).Round(time.Millisecond))
			if upAt.After(last) {
				last = upAt
			}
		}
		return true
	})
	if last.IsZero() {
		t.Fatalf("no worker logged %q after the kill: the test did not reach the outage", down)
	}
	for i, s := range spans {
		t.Logf("worker %d: %s", i, s)
	}
	return last
}
