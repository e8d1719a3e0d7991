package ha

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// The worker's log lines that begin and end a NATS outage.
const (
	natsDown = "NATS disconnected"
	natsUp   = "NATS reconnected"
)

// TestNATSFailover kills one node of a 3-node NATS cluster with SIGKILL
// under load: the node a worker and a client are connected to. The
// worker reconnects to another node and re-subscribes, the client
// reconnects and retries (once) what was in flight, and no request may
// fail; keys asked for outside the failover are fetched once for the
// whole fleet.
func TestNATSFailover(t *testing.T) {
	testenv.Long(t, "NATS node kills under load")
	cl := testenv.StartNATSCluster(t, 3)
	rd := testenv.StartRedis(t)
	// Every worker is given every node, a different one first (nats.go
	// shuffles them anyway).
	var specs []workerSpec
	for i := range 3 {
		specs = append(specs, workerSpec{NATSURL: rotated(cl, i), RedisURL: rd.URL()})
	}
	f := startFleet(t, 400, specs, worker.Config{MetricsAddr: "127.0.0.1:0"})
	killed := cl.Node(f.workers[0].ConnectedURL())
	if killed < 0 {
		t.Fatalf("worker 0 is connected to %q, not a node of the cluster", f.workers[0].ConnectedURL())
	}

	// Client i is on node i, so that one is on the node killed.
	var retries atomic.Int64
	var whyMu sync.Mutex
	why := map[string]int{} // retries by cause
	var conns []*nats.Conn
	var clients []*client.Client
	for i := range 3 {
		nc := testenv.Connect(t, rotated(cl, i), nats.DontRandomize(), nats.MaxReconnects(-1))
		conns = append(conns, nc)
		clients = append(clients, client.New(nc, client.WithTimeout(30*time.Second),
			client.WithRetryHook(func(_ contract.Function, err error) {
				retries.Add(1)
				whyMu.Lock()
				why[retryCause(err)]++
				whyMu.Unlock()
			})))
	}
	for i, c := range clients {
		// Every worker's subscriptions have reached every node once one
		// request from each node is answered.
		testenv.Eventually(t, fmt.Sprintf("client %d to be answered", i), func() bool {
			_, err := c.Image(context.Background(), contract.OCIManifest, f.images[0])
			return err == nil
		})
	}
	retries.Store(0)
	whyMu.Lock()
	clear(why)
	whyMu.Unlock()
	var onKilled []string
	var workersOnKilled []int
	for i, w := range f.workers {
		if cl.Node(w.ConnectedURL()) == killed {
			onKilled = append(onKilled, fmt.Sprintf("worker %d", i))
			workersOnKilled = append(workersOnKilled, i)
		}
	}
	onKilled = append(onKilled, fmt.Sprintf("client %d", killed))
	t.Logf("killing node %d, which %s are on", killed, strings.Join(onKilled, ", "))

	l := f.run(t, clients, 40*time.Millisecond)
	time.Sleep(3 * time.Second)

	ready := watchReadiness(f.workers)
	w := window{killed: time.Now(), atKill: l.counts()}
	cl.Kill(killed)
	testenv.Eventually(t, "the workers on the node to see it die", func() bool {
		for _, i := range workersOnKilled {
			if !f.loggedSince(i, natsDown, w.killed) {
				return false
			}
		}
		return true
	})
	w.recovered = f.recovery(t, w.killed, natsDown, natsUp)
	testenv.Eventually(t, "every worker ready and every client connected", func() bool {
		for _, wk := range f.workers {
			if status(wk) != http.StatusOK {
				return false
			}
		}
		for _, nc := range conns {
			if !nc.IsConnected() {
				return false
			}
		}
		return true
	})
	w.atRecovery = l.counts()
	ready.stop()
	for i, s := range ready.spans() {
		t.Logf("worker %d /readyz: %s", i, s)
	}
	time.Sleep(3 * time.Second)
	l.stop()
	l.report(t, fmt.Sprintf("kill -9 one NATS node of 3 (%s on it)", strings.Join(onKilled, ", ")), w, retries.Load())
	whyMu.Lock()
	t.Logf("client retries by cause: %v", why)
	whyMu.Unlock()
	for i, wk := range f.workers {
		if n := cl.Node(wk.ConnectedURL()); n == killed || n < 0 {
			t.Errorf("worker %d is on %q after the kill", i, wk.ConnectedURL())
		}
	}

	// The worker that was on the killed node answers alone: its
	// subscriptions were re-established on its new node.
	for _, wk := range f.workers[1:] {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		testenv.Must(t, wk.Shutdown(ctx), "stopping a worker")
		cancel()
	}
	for i, c := range clients {
		if _, err := c.Image(context.Background(), contract.OCIManifest, f.images[1]); err != nil {
			t.Errorf("client %d, worker 0 alone: %v", i, err)
		}
	}
}

// TestNATSReadiness: a worker's /readyz says 503 while its only NATS
// node is down, and 200 again once it has reconnected to the restarted
// node and its subscriptions answer.
func TestNATSReadiness(t *testing.T) {
	testenv.Long(t, "NATS node kills under load")
	cl := testenv.StartNATSCluster(t, 1)
	reg := testenv.StartRegistry(t)
	reg.PushImage(t, repo, "v1", testenv.OCIManifest, "linux/amd64")
	wk := testworker.Start(t, testworker.Config{NATSURL: cl.URL(), Config: worker.Config{MetricsAddr: "127.0.0.1:0"}})
	if s := status(wk); s != http.StatusOK {
		t.Fatalf("/readyz %d at start", s)
	}
	cl.Kill(0)
	testenv.Eventually(t, "/readyz 503 with the node down", func() bool { return status(wk) == http.StatusServiceUnavailable })
	cl.Start(0)
	testenv.Eventually(t, "/readyz 200 after the restart", func() bool { return status(wk) == http.StatusOK })
	c := testenv.Client(t, cl.URL())
	if _, err := c.Image(context.Background(), contract.OCIManifest, reg.Ref(repo, "v1")); err != nil {
		t.Fatalf("ready, but: %v", err)
	}
}

// retryCause names the cause of a retry from the failed attempt's error.
func retryCause(err error) string {
	for _, c := range []struct{ in, cause string }{
		{"connection to NATS lost", "connection lost"},
		{"no reply", "no ack or answer in time"},
		{"no worker subscribed", "no responders"},
	} {
		if strings.Contains(err.Error(), c.in) {
			return c.cause
		}
	}
	return err.Error()
}

// loggedSince reports whether worker i logged a line containing msg
// after since.
func (f *fleet) loggedSince(i int, msg string, since time.Time) bool {
	for _, e := range f.logs[i].All() {
		if e.Time.After(since) && strings.Contains(e.Message, msg) {
			return true
		}
	}
	return false
}

// rotated lists the cluster's URLs starting with node first.
func rotated(cl *testenv.NATSCluster, first int) string {
	urls := make([]string, cl.Len())
	for i := range urls {
		urls[i] = cl.NodeURL((first + i) % cl.Len())
	}
	return strings.Join(urls, ",")
}

var probe = http.Client{Timeout: time.Second}

// status is the worker's /readyz status code, 0 if it did not answer.
func status(w *testworker.Worker) int {
	resp, err := probe.Get("http://" + w.MetricsAddr() + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// readiness polls the workers' /readyz until stopped, and remembers
// when each was first not ready and when it was ready again.
type readiness struct {
	start     time.Time
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	down, up  []time.Time
	downCount []int
}

func watchReadiness(workers []*testworker.Worker) *readiness {
	ctx, cancel := context.WithCancel(context.Background())
	r := &readiness{start: time.Now(), cancel: cancel, down: make([]time.Time, len(workers)), up: make([]time.Time, len(workers)), downCount: make([]int, len(workers))}
	for i, w := range workers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			for ctx.Err() == nil {
				s := status(w)
				now := time.Now()
				switch {
				case s != http.StatusOK:
					if r.down[i].IsZero() {
						r.down[i] = now
					}
					r.downCount[i]++
					r.up[i] = time.Time{}
				case !r.down[i].IsZero() && r.up[i].IsZero():
					r.up[i] = now
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return r
}

func (r *readiness) stop() {
	r.cancel()
	r.wg.Wait()
}

// spans says, per worker, when /readyz went 503 and came back (after
// stop).
func (r *readiness) spans() []string {
	out := make([]string, len(r.down))
	for i := range out {
		switch {
		case r.down[i].IsZero():
			out[i] = "200 throughout (polled every 2ms)"
		default:
			out[i] = fmt.Sprintf("503 from %v after the kill (%d polls), 200 again %v after it",
				r.down[i].Sub(r.start).Round(time.Millisecond), r.downCount[i], r.up[i].Sub(r.start).Round(time.Millisecond))
		}
	}
	return out
}
