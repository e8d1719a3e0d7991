package client_test

import (
	"context"
	"errors"
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
)

// retries counts a client's retries through its retry hook.
type retries struct {
	mu   sync.Mutex
	errs []error
}

func (r *retries) hook(_ contract.Function, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

func (r *retries) list() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// responder answers the digest subject with a fixed reply, after
// swallowing the first swallow requests it gets (a request lost on a
// dead node looks just like that to the client).
func responder(t *testing.T, url string, swallow int64, reply func(*nats.Msg) *nats.Msg) *atomic.Int64 {
	t.Helper()
	var seen atomic.Int64
	nc := testenv.Connect(t, url)
	_, err := nc.QueueSubscribe(contract.ManifestDigest.Subject(contract.DefaultSubjectPrefix), contract.DefaultQueueGroup, func(m *nats.Msg) {
		if seen.Add(1) <= swallow {
			return
		}
		_ = m.RespondMsg(reply(m))
	})
	testenv.Must(t, err, "subscribe")
	testenv.Must(t, nc.Flush(), "flush")
	return &seen
}

func digestReply(m *nats.Msg) *nats.Msg {
	r := nats.NewMsg(m.Reply)
	r.Data = []byte(`{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}`)
	r.Header.Set(contract.HeaderCache, string(contract.Hit))
	return r
}

// TestRetryLostRequest: the first request gets no answer (lost between
// client and worker); after the attempt timeout the call sends it once
// more, and that answer is the call's.
func TestRetryLostRequest(t *testing.T) {
	ns := testenv.StartNATS(t)
	seen := responder(t, ns.ClientURL(), 1, digestReply)
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAttemptTimeout(200*time.Millisecond), client.WithRetryHook(r.hook))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	d, err := c.Digest(ctx, "busybox")
	if err != nil || !strings.HasPrefix(d, "sha256:") {
		t.Fatalf("Digest: %q, %v", d, err)
	}
	if got := r.list(); len(got) != 1 || !errors.Is(got[0], client.ErrUnreachable) {
		t.Errorf("retries: %v, want exactly one, after no reply in time", got)
	}
	if n := seen.Load(); n != 2 {
		t.Errorf("the responder saw %d requests, want 2", n)
	}
	if el := time.Since(start); el < 200*time.Millisecond || el > 2*time.Second {
		t.Errorf("answered after %v: want the attempt timeout and one round trip", el)
	}
}

// TestRetryOnce: a fleet that never answers costs one retry, and one
// more send of that retry when nobody acknowledged it either (the retry
// after a reconnect may race the cluster's interest in the reply
// subject), not more; the call ends within its budget.
func TestRetryOnce(t *testing.T) {
	ns := testenv.StartNATS(t)
	seen := responder(t, ns.ClientURL(), 1<<30, digestReply)
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAttemptTimeout(100*time.Millisecond), client.WithRetryHook(r.hook))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Digest(ctx, "busybox")
	if !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("silent fleet: %v, want ErrUnreachable", err)
	}
	if el := time.Since(start); el < 450*time.Millisecond || el > 2*time.Second {
		t.Errorf("gave up after %v, want the call's 500ms budget", el)
	}
	if got, n := len(r.list()), seen.Load(); got != 2 || n != 3 {
		t.Errorf("%d retries and %d requests, want 2 and 3", got, n)
	}
	// A budget not longer than the attempt timeout is one attempt.
	seen.Store(0)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 80*time.Millisecond)
	defer cancel2()
	if _, err := c.Digest(ctx2, "busybox"); !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("short budget: %v", err)
	}
	if got, n := len(r.list()), seen.Load(); got != 2 || n != 1 {
		t.Errorf("short budget: %d retries in all and %d requests, want 2 and 1", got, n)
	}
}

// TestNoRetryOnErrorReply: a worker's error answer is the answer.
func TestNoRetryOnErrorReply(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAttemptTimeout(time.Second), client.WithRetryHook(r.hook))
	_, err := c.Digest(context.Background(), reg.Ref("app", "missing"))
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 404 {
		t.Fatalf("missing tag: %v, want a 404", err)
	}
	if got := r.list(); len(got) != 0 {
		t.Errorf("an error reply was retried: %v", got)
	}
}

// TestErrorReplyNeverResent: an error reply is the answer, never sent
// again. The responder is the only subscriber, so every request the
// client sends reaches it: it must count exactly one, still after more
// than the attempt timeout has passed.
func TestErrorReplyNeverResent(t *testing.T) {
	ns := testenv.StartNATS(t)
	seen := responder(t, ns.ClientURL(), 0, func(m *nats.Msg) *nats.Msg {
		r := nats.NewMsg(m.Reply)
		r.Header.Set(contract.HeaderErrorCode, "503")
		r.Header.Set(contract.HeaderError, "index.docker.io/library/busybox:latest: shutting down")
		return r
	})
	var r retries
	const attempt = 100 * time.Millisecond
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAttemptTimeout(attempt), client.WithRetryHook(r.hook))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Digest(ctx, "busybox")
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 503 || ce.Message != "index.docker.io/library/busybox:latest: shutting down" {
		t.Fatalf("Digest: %v, want the responder's 503", err)
	}
	time.Sleep(3 * attempt)
	if n := seen.Load(); n != 1 {
		t.Errorf("the responder saw %d requests, want exactly 1", n)
	}
	if got := r.list(); len(got) != 0 {
		t.Errorf("retries: %v, want none", got)
	}
}

// TestLateSubscriberLosesFirstRequest: a call first meets no responders
// (resent every 250 ms), then a worker that subscribes late and loses
// the first request it gets (as if lost with a node). The call still
// succeeds: the resends after no responders did not use up the one
// retry, which the attempt timeout then spends on the lost request.
func TestLateSubscriberLosesFirstRequest(t *testing.T) {
	ns := testenv.StartNATS(t)
	var (
		r            retries
		noResponders atomic.Int64
		resent       = make(chan struct{})
	)
	hook := func(fn contract.Function, err error) {
		r.hook(fn, err)
		if strings.Contains(err.Error(), "no worker subscribed") && noResponders.Add(1) == 2 {
			close(resent)
		}
	}
	const attempt = 300 * time.Millisecond
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAttemptTimeout(attempt), client.WithRetryHook(hook))
	type result struct {
		digest string
		err    error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		// A budget far longer than the attempt timeout: a call whose
		// retry is spent waits for all of it on the lost request.
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		d, err := c.Digest(ctx, "busybox")
		done <- result{d, err}
	}()

	// The worker subscribes once the request has been resent twice
	// after no responders.
	var seen *atomic.Int64
	select {
	case <-resent:
		seen = responder(t, ns.ClientURL(), 1, digestReply)
	case res := <-done:
		t.Fatalf("the call ended before it was resent twice after no responders: %q, %v (retries %v)", res.digest, res.err, r.list())
	}
	res := <-done
	el := time.Since(start)
	if res.err != nil || !strings.HasPrefix(res.digest, "sha256:") {
		t.Fatalf("Digest: %q, %v after %v (retries %v)", res.digest, res.err, el, r.list())
	}
	if n := seen.Load(); n != 2 {
		t.Errorf("the worker saw %d requests, want 2: the lost one and its retry", n)
	}
	got := r.list()
	if len(got) < 3 {
		t.Fatalf("retries: %v, want at least two after no responders and one after the attempt timeout", got)
	}
	for _, err := range got[:len(got)-1] {
		if !strings.Contains(err.Error(), "no worker subscribed") {
			t.Errorf("retries: %v, want those before the last after no responders", got)
			break
		}
	}
	if last := got[len(got)-1]; !strings.Contains(last.Error(), "no reply on") {
		t.Errorf("last retry after %v, want after no reply within the attempt timeout", last)
	}
	if el > 3*time.Second {
		t.Errorf("answered after %v: want the no-responders resends, one attempt timeout (%v) and a round trip", el, attempt)
	}
}

// TestRetryNoResponders: no responders is retried after a pause in
// which a worker may re-subscribe; the call then gets its answer.
func TestRetryNoResponders(t *testing.T) {
	ns := testenv.StartNATS(t)
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithRetryHook(r.hook))
	nc := testenv.Connect(t, ns.ClientURL())
	time.AfterFunc(50*time.Millisecond, func() {
		_, _ = nc.Subscribe(contract.ManifestDigest.Subject(contract.DefaultSubjectPrefix), func(m *nats.Msg) { _ = m.RespondMsg(digestReply(m)) })
	})
	if _, err := c.Digest(context.Background(), "busybox"); err != nil {
		t.Fatalf("Digest: %v", err)
	}
	if got := r.list(); len(got) != 1 || !strings.Contains(got[0].Error(), "no worker subscribed") {
		t.Errorf("retries: %v, want one after no responders", got)
	}
}

// TestNoRespondersGivesUp: with no worker at all, a call keeps asking
// for NoRespondersWait, then reports the fleet unreachable, well before
// its budget; those resends are not the one retry of a lost request.
func TestNoRespondersGivesUp(t *testing.T) {
	ns := testenv.StartNATS(t)
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithRetryHook(r.hook))
	start := time.Now()
	_, err := c.Digest(context.Background(), "busybox")
	if !errors.Is(err, client.ErrUnreachable) || !strings.Contains(err.Error(), "no worker subscribed") {
		t.Fatalf("no workers: %v, want ErrUnreachable naming no responders", err)
	}
	if el := time.Since(start); el < client.NoRespondersWait || el > client.NoRespondersWait+5*time.Second {
		t.Errorf("gave up after %v, want about %v", el, client.NoRespondersWait)
	}
	if n := len(r.list()); n != 8 {
		t.Errorf("%d resends, want 8 (every 250ms for 2s)", n)
	}
}

// TestRetryAfterReconnect: the client's NATS node dies (SIGKILL) while
// its request waits for a reply. The call notices at once, waits for the
// reconnect to another node, and sends the request again there: well
// before the attempt timeout.
func TestRetryAfterReconnect(t *testing.T) {
	cl := testenv.StartNATSCluster(t, 3)
	// The responder sits on node 1 and swallows the first request (as if
	// its reply died with node 0).
	seen := responder(t, cl.NodeURL(1), 1, digestReply)
	nc := testenv.Connect(t, cl.NodeURL(0)+","+cl.NodeURL(2), nats.DontRandomize(), nats.ReconnectWait(50*time.Millisecond))
	if nc.ConnectedUrl() != cl.NodeURL(0) {
		t.Fatalf("client on %s, want node 0", nc.ConnectedUrl())
	}
	var r retries
	c := client.New(nc, client.WithAttemptTimeout(10*time.Second), client.WithRetryHook(r.hook))
	go func() {
		for seen.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		cl.Kill(0)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := c.Digest(ctx, "busybox"); err != nil {
		t.Fatalf("Digest: %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("answered after %v: the loss was not noticed before the attempt timeout", el)
	}
	if got := r.list(); len(got) != 1 || !strings.Contains(got[0].Error(), "connection to NATS lost") {
		t.Errorf("retries: %v, want one after the connection was lost", got)
	}
	if nc.ConnectedUrl() == cl.NodeURL(0) || !nc.IsConnected() {
		t.Errorf("client on %q, connected %v", nc.ConnectedUrl(), nc.IsConnected())
	}
}
