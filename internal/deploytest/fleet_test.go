package deploytest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// proc is a worker process.
type proc struct {
	cmd     *exec.Cmd
	metrics string // base URL of /metrics, /readyz
	stderr  *bytes.Buffer
	exited  chan struct{}
	err     error
}

func startWorker(t *testing.T, bin, natsURL, redisURL string, extra ...string) *proc {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	args := append([]string{"--nats-url", natsURL, "--redis-url", redisURL, "--metrics-addr", addr,
		"--fetch-timeout", "5s", "--lock-wait", "2s", "--log-level", "warn"}, extra...)
	p := &proc{cmd: exec.Command(bin, args...), metrics: "http://" + addr, stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	p.cmd.Stderr = &lockedWriter{w: p.stderr}
	testenv.Must(t, p.cmd.Start(), "starting worker")
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("worker %s stderr:\n%s", addr, p.stderr.String())
		}
	})
	testenv.Eventually(t, "worker ready", func() bool { return p.status("/readyz") == http.StatusOK })
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) status(path string) int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(p.metrics + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metric returns the sum of the samples of name (any labels) on /metrics.
func (p *proc) metric(t *testing.T, name string) float64 {
	t.Helper()
	v, err := p.scrape(name)
	if err != nil {
		t.Fatalf("scraping %s: %v", p.metrics, err)
	}
	return v
}

// scrape is metric without the test: safe off the test's goroutine.
func (p *proc) scrape(name string) (float64, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(p.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") &&
			!(strings.HasSuffix(name, "}") && strings.HasPrefix(line, name)) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}

// stack is a registry with images, a NATS server, a Redis and three
// worker processes.
type stack struct {
	reg     *testenv.Registry
	redis   *testenv.Redis
	ns      *natsserver.Server
	natsURL string
	images  []string
	workers []*proc
	bin     string
}

func startStack(t *testing.T, workerArgs ...string) *stack {
	t.Helper()
	s := &stack{bin: testenv.BuildCommand(t, "worker"), reg: testenv.StartRegistry(t), redis: testenv.StartRedis(t)}
	s.startNATS(t, -1)
	for i := range 10 {
		tag := fmt.Sprintf("v%d", i)
		s.reg.PushImage(t, "load/app", tag, testenv.OCIManifest, "linux/amd64")
		s.images = append(s.images, s.reg.Ref("load/app", tag))
	}
	for range 3 {
		s.workers = append(s.workers, startWorker(t, s.bin, s.natsURL, s.redis.URL(), workerArgs...))
	}
	return s
}

// startNATS starts the server, on port (-1: a free one).
func (s *stack) startNATS(t *testing.T, port int) {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
	testenv.Must(t, err, "nats server")
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	s.ns, s.natsURL = ns, ns.ClientURL()
}

func (s *stack) client(t *testing.T) *client.Client {
	nc := testenv.Connect(t, s.natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.RetryOnFailedConnect(true))
	return client.New(nc, client.WithTimeout(2*time.Second))
}

var functions = []contract.Function{contract.ManifestDigest, contract.OCIManifest, contract.OCIManifestConfig}

// loadResult counts a load run.
type loadResult struct {
	ok, failed, retried atomic.Int64
	mu                  sync.Mutex
	errs                map[string]int
}

// workload names the function and image of request i.
type workload func(i int) (contract.Function, string)

// cycle asks for the images in turn, each with the three functions.
func cycle(images []string) workload {
	return func(i int) (contract.Function, string) { return functions[i%3], images[(i/3)%len(images)] }
}

// load sends n requests of wl from conc goroutines; a request that times
// out or finds no responder is retried once, as a policy host's client
// would. at is called once, in its own goroutine, when `after` requests
// have been answered: it must not call t.Fatal, nor touch state the test
// goroutine writes. load itself touches no shared state but r, so it may
// run on a goroutine of its own.
func load(cli *client.Client, wl workload, n, conc, after int, at func()) *loadResult {
	r := &loadResult{errs: map[string]int{}}
	jobs := make(chan int, n)
	for i := range n {
		jobs <- i
	}
	close(jobs)
	var answered atomic.Int64
	var once sync.Once
	var atDone sync.WaitGroup
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for i := range jobs {
				fn, img := wl(i)
				_, err := cli.Image(context.Background(), fn, img)
				if errors.Is(err, client.ErrUnreachable) {
					r.retried.Add(1)
					_, err = cli.Image(context.Background(), fn, img)
				}
				if err != nil {
					r.failed.Add(1)
					r.mu.Lock()
					r.errs[err.Error()]++
					r.mu.Unlock()
				} else {
					r.ok.Add(1)
				}
				if answered.Add(1) == int64(after) && at != nil {
					once.Do(func() { atDone.Go(at) })
				}
			}
		})
	}
	wg.Wait()
	atDone.Wait()
	return r
}

func (r *loadResult) String() string {
	return fmt.Sprintf("ok %d, failed %d, retried %d, errors %v", r.ok.Load(), r.failed.Load(), r.retried.Load(), r.errs)
}

// delay makes reg wait d before serving a request whose path contains
// match (then serves it as usual), so that fetches of it last a while.
func delay(reg *testenv.Registry, match string, d time.Duration) {
	reg.Override(func(r *http.Request) bool {
		if strings.Contains(r.URL.Path, match) {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
			}
		}
		return false
	}, nil)
}

// TestKillWorkerUnderLoad: kill -9 of one of three workers during 2,000
// requests, with one retry on timeout or no responders: nothing fails.
// The load asks for a new tag every 30 requests (10 per function) and
// the registry is slow on manifests, so misses and fleet-lock fetches are
// in flight all along; the kill waits until the victim has a fetch in
// flight, so it loses fetches, held locks and requests taken, and some
// requests must be retried.
func TestKillWorkerUnderLoad(t *testing.T) {
	testenv.Long(t, "worker processes killed under load")
	s := startStack(t)
	const n, perTag = 2000, 10
	var tags []string
	for i := range n/(3*perTag) + 1 {
		s.reg.PushImage(t, "kill/app", fmt.Sprintf("t%d", i), testenv.OCIManifest, "linux/amd64")
		tags = append(tags, s.reg.Ref("kill/app", fmt.Sprintf("t%d", i)))
	}
	delay(s.reg, "/kill/app/manifests/", 100*time.Millisecond)
	wl := func(i int) (contract.Function, string) { return functions[i%3], tags[i/(3*perTag)] }

	cli := s.client(t)
	victim := s.workers[0]
	var atKill float64 // written by at; read after load returns
	var scrapeErr error
	began := time.Now()
	r := load(cli, wl, n, 32, 300, func() {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			v, err := victim.scrape("regcap_fetch_inflight")
			if scrapeErr = err; err == nil && v > 0 {
				atKill = v
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		_ = victim.cmd.Process.Signal(syscall.SIGKILL)
		<-victim.exited
	})
	t.Logf("kill -9 under load, with %v fetches in flight in the victim: %s, in %s", atKill, r, time.Since(began).Round(time.Millisecond))
	if victim.alive() {
		t.Fatal("the victim was not killed during the load")
	}
	if atKill == 0 {
		t.Errorf("the victim had no fetch in flight when killed (last scrape error: %v)", scrapeErr)
	}
	if r.failed.Load() != 0 {
		t.Errorf("%d requests failed: %v", r.failed.Load(), r.errs)
	}
	if r.retried.Load() == 0 {
		t.Error("no request was retried: the kill lost nothing in flight, so it tested nothing")
	}
	var requests, hits, upstream float64
	for i, w := range s.workers[1:] {
		if !w.alive() {
			t.Fatalf("worker %d died: %v", i+1, w.err)
		}
		requests += w.metric(t, "regcap_requests_total")
		hits += w.metric(t, `regcap_cache_total{result="hit"}`)
		upstream += w.metric(t, "regcap_upstream_requests_total")
	}
	// The survivors' metrics saw the load: most requests, hits among
	// them, and the registry requests of their fetches.
	if requests < 1000 || hits == 0 || upstream == 0 {
		t.Errorf("metrics of the surviving workers: %v requests, %v hits, %v upstream requests", requests, hits, upstream)
	}
}

// TestRedisRestartUnderLoad: Redis killed and started again during 2,000
// requests: nothing fails, and the workers use Redis again afterwards.
func TestRedisRestartUnderLoad(t *testing.T) {
	testenv.Long(t, "worker processes killed under load")
	// Without the memory tier every answer goes through Redis, so the
	// outage is felt by every request rather than hidden by memory hits.
	s := startStack(t, "--memory-cache-size", "0")
	cli := s.client(t)
	r := load(cli, cycle(s.images), 2000, 32, 300, func() {
		s.redis.Stop()
		time.Sleep(500 * time.Millisecond) // an outage long enough to be seen
		s.redis.Start()
	})
	t.Logf("redis restart under load: %s", r)
	if r.failed.Load() != 0 {
		t.Errorf("%d requests failed: %v", r.failed.Load(), r.errs)
	}
	var redisErrors float64
	for _, w := range s.workers {
		if !w.alive() {
			t.Fatalf("a worker died: %v", w.err)
		}
		redisErrors += w.metric(t, "regcap_redis_errors_total")
	}
	t.Logf("regcap_redis_errors_total over the fleet: %v", redisErrors)
	if redisErrors == 0 {
		t.Error("no Redis errors counted: the outage was not felt by the load")
	}
	// Redis is used again: new keys fetched now reach Redis. During an
	// outage a worker probes Redis once a second, so a request right after
	// the restart may still skip it; traffic goes on, as it would.
	rdb := s.redis.Client(t)
	next := 0
	testenv.Eventually(t, "an answer stored in Redis again", func() bool {
		tag := fmt.Sprintf("v%d", next)
		next++
		s.reg.PushImage(t, "load/after", tag, testenv.OCIManifest, "linux/amd64")
		if _, err := cli.Image(context.Background(), contract.ManifestDigest, s.reg.Ref("load/after", tag)); err != nil {
			t.Fatalf("after the restart: %v", err)
		}
		n, _ := rdb.Exists(context.Background(), "regcap:v2:manifest_digest:"+s.reg.Ref("load/after", tag)).Result()
		if n == 1 {
			return true
		}
		time.Sleep(100 * time.Millisecond)
		return false
	})
}

// TestNATSRestartUnderLoad: the NATS server goes away and comes back on
// the same port during a load. The workers say they are not ready while
// disconnected, reconnect, serve again, and hold no more goroutines than
// before.
func TestNATSRestartUnderLoad(t *testing.T) {
	testenv.Long(t, "worker processes killed under load")
	s := startStack(t)
	natsPort := s.ns.ClientURL()[strings.LastIndex(s.ns.ClientURL(), ":")+1:]
	p, _ := strconv.Atoi(natsPort)

	cli := s.client(t)
	// Warm up, then take the goroutine baseline.
	if r := load(cli, cycle(s.images), 300, 16, 0, nil); r.failed.Load() != 0 {
		t.Fatalf("warm-up: %s", r)
	}
	before := make([]float64, len(s.workers))
	for i, w := range s.workers {
		before[i] = w.metric(t, "go_goroutines")
	}

	// The load runs on its own goroutine and only signals when 300 are
	// answered: the restart (t.Fatal, s.ns) stays on the test goroutine.
	reached := make(chan struct{})
	loaded := make(chan *loadResult, 1)
	go func() { loaded <- load(cli, cycle(s.images), 2000, 32, 300, func() { close(reached) }) }()
	select {
	case <-reached:
	case r := <-loaded:
		t.Fatalf("the load ended before 300 answers: %s", r)
	}
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	for i, w := range s.workers {
		testenv.Eventually(t, fmt.Sprintf("worker %d not ready with NATS down", i),
			func() bool { return w.status("/readyz") == http.StatusServiceUnavailable })
	}
	s.startNATS(t, p)
	r := <-loaded
	t.Logf("NATS restart under load (failures expected while the server is down): %s", r)

	for i, w := range s.workers {
		if !w.alive() {
			t.Fatalf("worker %d died: %v", i, w.err)
		}
		testenv.Eventually(t, "readyz after the restart", func() bool { return w.status("/readyz") == http.StatusOK })
		if n := w.metric(t, "regcap_nats_reconnects_total"); n < 1 {
			t.Errorf("worker %d: regcap_nats_reconnects_total %v, want at least 1", i, n)
		}
	}
	// Serving again: a load after the restart has no failures.
	if r := load(cli, cycle(s.images), 600, 16, 0, nil); r.failed.Load() != 0 {
		t.Errorf("after the restart: %s", r)
	}
	// No leak: goroutines settle back near the baseline (idle HTTP and
	// Redis connections may differ by a few).
	for i, w := range s.workers {
		var after float64
		deadline := time.Now().Add(10 * time.Second)
		for {
			after = w.metric(t, "go_goroutines")
			if after <= before[i]+10 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("worker %d: go_goroutines %v before, %v after", i, before[i], after)
		if after > before[i]+10 {
			t.Errorf("worker %d: %v goroutines after the restart, %v before: a leak", i, after, before[i])
		}
	}
}

// TestKillLockHolder: the worker holding the fleet lock for a key is
// killed (kill -9) mid-fetch. The workers waiting on its lock take over
// after --lock-wait (2s), long before the dead lock expires (fetch
// timeout 20s + 2s), and every request is answered.
func TestKillLockHolder(t *testing.T) {
	testenv.Long(t, "worker processes killed under load")
	const lockWait, lockExpiry = 2 * time.Second, 20*time.Second + 2*time.Second
	s := startStack(t, "--fetch-timeout", "20s", "--lock-wait", lockWait.String())
	img := s.reg.PushImage(t, "held/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref := s.reg.Ref("held/app", "v1")
	gate := s.reg.Hold("/held/app/manifests/v1")

	cli := client.New(testenv.Connect(t, s.natsURL), client.WithTimeout(5*time.Second))
	call := func() error {
		r, err := cli.Image(context.Background(), contract.ManifestDigest, ref)
		if errors.Is(err, client.ErrUnreachable) {
			r, err = cli.Image(context.Background(), contract.ManifestDigest, ref)
		}
		if err == nil && string(r.Body) != `{"digest":"`+img.Digest+`"}` {
			err = fmt.Errorf("wrong body %s", r.Body)
		}
		return err
	}
	errs := make(chan error, 21)
	go func() { errs <- call() }()
	<-gate.Arrived()
	// The holder is the worker with a fetch in flight.
	var holder *proc
	testenv.Eventually(t, "the lock holder's fetch in flight", func() bool {
		for _, w := range s.workers {
			if w.metric(t, "regcap_fetch_inflight") == 1 {
				holder = w
				return true
			}
		}
		return false
	})
	for range 20 {
		go func() { errs <- call() }()
	}
	testenv.Eventually(t, "another worker waiting on the lock", func() bool {
		for _, w := range s.workers {
			if w != holder && w.metric(t, "regcap_fetch_queued") >= 1 {
				return true
			}
		}
		return false
	})
	clients := s.ns.NumClients()
	testenv.Must(t, holder.cmd.Process.Signal(syscall.SIGKILL), "kill -9 the holder")
	<-holder.exited
	killed := time.Now()
	gate.Release()
	// A request sent now, once the server has dropped the holder, goes to
	// a survivor. Its client waits longer than the dead lock lives, so
	// that an answer only at the lock's expiry would be seen as such
	// rather than as a timeout that a retry hides.
	testenv.Eventually(t, "the NATS server dropped the holder", func() bool { return s.ns.NumClients() < clients })
	patient := client.New(testenv.Connect(t, s.natsURL), client.WithTimeout(lockExpiry+10*time.Second))
	type answer struct {
		err  error
		took time.Duration // from the kill
	}
	probe := make(chan answer, 1)
	go func() {
		r, err := patient.Image(context.Background(), contract.ManifestDigest, ref)
		if err == nil && string(r.Body) != `{"digest":"`+img.Digest+`"}` {
			err = fmt.Errorf("wrong body %s", r.Body)
		}
		probe <- answer{err, time.Since(killed)}
	}()

	failed := 0
	for range 21 {
		if err := <-errs; err != nil {
			failed++
			t.Errorf("request failed: %v", err)
		}
	}
	a := <-probe
	if a.err != nil {
		t.Errorf("request after the kill failed: %v", a.err)
	}
	// Not a measure of speed: the bound is --lock-wait with a generous
	// slack, and only has to tell a takeover at --lock-wait from an
	// answer at the dead lock's expiry.
	if bound := lockWait + (lockExpiry-lockWait)/2; a.err == nil && a.took >= bound {
		t.Errorf("a request sent after the kill was answered %s after it, want within --lock-wait (%s) plus slack, under %s (the dead lock lives %s)",
			a.took.Round(time.Millisecond), lockWait, bound, lockExpiry)
	}
	t.Logf("lock holder killed: %d of 21 requests failed; one sent after the kill answered %s after it; registry saw %d HEADs",
		failed, a.took.Round(time.Millisecond), s.reg.CountManifest("HEAD", "held/app", "v1"))
	rdb := s.redis.Client(t)
	left, err := rdb.PTTL(context.Background(), "regcap:lock:{regcap:v2:manifest_digest:"+ref+"}").Result()
	testenv.Must(t, err, "PTTL of the lock")
	if left <= 0 {
		t.Errorf("the dead holder's lock is gone (PTTL %s): the others did not take over within --lock-wait", left)
	}
}
