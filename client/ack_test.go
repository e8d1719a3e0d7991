package client_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// ackResponder is a worker on the digest subject that does what act says
// with the n-th request it gets (n from 1): acknowledge it or not, then
// answer it after a delay, or never (answer < 0).
type ackResponder struct {
	seen    atomic.Int64
	acked   atomic.Int64
	asked   atomic.Int64 // requests that named an acknowledgement subject
	ackless bool         // an old worker: never acknowledges
}

// askedAck is the acknowledgement subject m asks for, as a worker reads
// it: its reply subject's last token, or the header.
func askedAck(m *nats.Msg) string {
	if strings.HasSuffix(m.Reply, "."+contract.AckReplyToken) {
		return m.Reply + contract.AckSuffix
	}
	return m.Header.Get(contract.HeaderAck)
}

func startAckResponder(t *testing.T, url string, r *ackResponder, act func(n int64) (ack bool, answer time.Duration)) {
	t.Helper()
	nc := testenv.Connect(t, url)
	_, err := nc.QueueSubscribe(contract.ManifestDigest.Subject(contract.DefaultSubjectPrefix), contract.DefaultQueueGroup, func(m *nats.Msg) {
		n := r.seen.Add(1)
		ack, after := act(n)
		if subj := askedAck(m); subj != "" {
			r.asked.Add(1)
			if ack && !r.ackless {
				r.acked.Add(1)
				_ = nc.Publish(subj, nil)
			}
		}
		if after < 0 {
			return
		}
		time.AfterFunc(after, func() {
			reply := digestReply(m)
			reply.Header.Set(contract.HeaderCache, string(contract.Miss))
			_ = m.RespondMsg(reply)
		})
	})
	testenv.Must(t, err, "subscribe")
	testenv.Must(t, nc.Flush(), "flush")
}

func digest(t *testing.T, c *client.Client, budget time.Duration) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	d, err := c.Digest(ctx, "busybox")
	if err == nil && !strings.HasPrefix(d, "sha256:") {
		t.Fatalf("Digest: %q", d)
	}
	return time.Since(start), err
}

// TestSlowAnswerAskedOnce: a worker that acknowledges a request and
// answers it after longer than the ack timeout (a slow registry) is
// asked once: the acknowledgement says the request is being answered.
func TestSlowAnswerAskedOnce(t *testing.T) {
	ns := testenv.StartNATS(t)
	var w ackResponder
	startAckResponder(t, ns.ClientURL(), &w, func(int64) (bool, time.Duration) { return true, 1500 * time.Millisecond })
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAckTimeout(100*time.Millisecond), client.WithAttemptTimeout(5*time.Second), client.WithRetryHook(r.hook))
	if _, err := digest(t, c, 20*time.Second); err != nil {
		t.Fatalf("Digest: %v", err)
	}
	if n, a := w.seen.Load(), w.asked.Load(); n != 1 || a != 1 {
		t.Errorf("the worker saw %d requests (%d asking for an acknowledgement), want 1 and 1", n, a)
	}
	if got := r.list(); len(got) != 0 {
		t.Errorf("retries: %v, want none", got)
	}
}

// TestLostRequestRetriedAfterAckTimeout: a request that nobody
// acknowledges (lost with a node: the worker drops it) is sent again
// after the ack timeout, not after the attempt timeout, and the retry's
// answer is the call's.
func TestLostRequestRetriedAfterAckTimeout(t *testing.T) {
	ns := testenv.StartNATS(t)
	var w ackResponder
	startAckResponder(t, ns.ClientURL(), &w, func(n int64) (bool, time.Duration) {
		if n == 1 {
			return false, -1 // lost
		}
		return true, 0
	})
	var r retries
	const attempt = 20 * time.Second
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAckTimeout(200*time.Millisecond), client.WithAttemptTimeout(attempt), client.WithRetryHook(r.hook))
	el, err := digest(t, c, 2*attempt)
	if err != nil {
		t.Fatalf("Digest: %v", err)
	}
	if n := w.seen.Load(); n != 2 {
		t.Errorf("the worker saw %d requests, want 2: the lost one and its retry", n)
	}
	if got := r.list(); len(got) != 1 || !strings.Contains(got[0].Error(), "no reply on") {
		t.Errorf("retries: %v, want one after no acknowledgement", got)
	}
	if el > attempt/2 {
		t.Errorf("answered after %v: the retry waited for the attempt timeout (%v)", el, attempt)
	}
}

// TestAckedCallOutlivesNoResponders: a worker acknowledges a request,
// then stops listening (a drain) and answers late, after the attempt
// timeout. The retry finds no responders, yet the call is not reported
// unreachable: the answer to the first attempt is on its way, and it is
// the call's.
func TestAckedCallOutlivesNoResponders(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	var seen atomic.Int64
	var sub *nats.Subscription
	ready := make(chan struct{})
	sub, err := nc.Subscribe(contract.ManifestDigest.Subject(contract.DefaultSubjectPrefix), func(m *nats.Msg) {
		<-ready
		seen.Add(1)
		_ = nc.Publish(askedAck(m), nil)
		_ = sub.Unsubscribe()
		// Later than the no-responders resends give up.
		time.AfterFunc(client.NoRespondersWait+time.Second, func() { _ = m.RespondMsg(digestReply(m)) })
	})
	close(ready)
	testenv.Must(t, err, "subscribe")
	testenv.Must(t, nc.Flush(), "flush")
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAckTimeout(50*time.Millisecond), client.WithAttemptTimeout(200*time.Millisecond), client.WithRetryHook(r.hook))
	if _, err := digest(t, c, 10*time.Second); err != nil {
		t.Fatalf("Digest: %v (retries %v)", err, r.list())
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("the worker saw %d requests, want 1", n)
	}
	if got := r.list(); len(got) == 0 || !strings.Contains(got[0].Error(), "no reply on") {
		t.Errorf("retries: %v, want one after the attempt timeout, then resends after no responders", got)
	}
}

// TestAcklessFleet: a fleet too old to acknowledge. Its first slow
// answer is asked for three times (the retry after the ack timeout, and
// once more as nobody acknowledged that either), and the answer to the
// first attempt is the call's; once the client has seen a miss
// answered without an acknowledgement, it waits the attempt timeout and
// a slow answer is asked for once.
func TestAcklessFleet(t *testing.T) {
	ns := testenv.StartNATS(t)
	w := ackResponder{ackless: true}
	startAckResponder(t, ns.ClientURL(), &w, func(n int64) (bool, time.Duration) {
		if n == 2 {
			return true, -1 // the retry of the first call is never answered
		}
		return true, 600 * time.Millisecond
	})
	var r retries
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAckTimeout(100*time.Millisecond), client.WithAttemptTimeout(5*time.Second), client.WithRetryHook(r.hook))
	if _, err := digest(t, c, 20*time.Second); err != nil {
		t.Fatalf("first call: %v", err)
	}
	if n, got := w.seen.Load(), len(r.list()); n != 3 || got != 2 {
		t.Errorf("first call: %d requests and %d retries, want 3 and 2", n, got)
	}
	if _, err := digest(t, c, 20*time.Second); err != nil {
		t.Fatalf("second call: %v", err)
	}
	if n, got := w.seen.Load(), len(r.list()); n != 4 || got != 2 {
		t.Errorf("after the second call: %d requests and %d retries, want 4 and 2", n, got)
	}
	if a := w.asked.Load(); a != 4 {
		t.Errorf("%d requests asked for an acknowledgement, want all 4 (a fleet upgraded later is noticed)", a)
	}
}

// TestNoAckTimeoutAsksForNone: WithAckTimeout(0) sends no
// acknowledgement header.
func TestNoAckTimeoutAsksForNone(t *testing.T) {
	ns := testenv.StartNATS(t)
	var w ackResponder
	startAckResponder(t, ns.ClientURL(), &w, func(int64) (bool, time.Duration) { return true, 0 })
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAckTimeout(0))
	if _, err := digest(t, c, 5*time.Second); err != nil {
		t.Fatalf("Digest: %v", err)
	}
	if n, a := w.seen.Load(), w.asked.Load(); n != 1 || a != 0 {
		t.Errorf("%d requests, %d asking for an acknowledgement: want 1 and 0", n, a)
	}
}

// TestUnackedRetrySentOnceMore: the first request and its retry are
// both lost (nobody acknowledges either: a resend that raced the
// cluster's interest in the reply subject looks like that); the retry
// is sent once more after the ack timeout, and that send is answered,
// well before the attempt timeout.
func TestUnackedRetrySentOnceMore(t *testing.T) {
	ns := testenv.StartNATS(t)
	var w ackResponder
	startAckResponder(t, ns.ClientURL(), &w, func(n int64) (bool, time.Duration) {
		if n <= 2 {
			return false, -1 // lost
		}
		return true, 0
	})
	var r retries
	const attempt = 20 * time.Second
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithAckTimeout(200*time.Millisecond), client.WithAttemptTimeout(attempt), client.WithRetryHook(r.hook))
	el, err := digest(t, c, 2*attempt)
	if err != nil {
		t.Fatalf("Digest: %v", err)
	}
	if n, got := w.seen.Load(), len(r.list()); n != 3 || got != 2 {
		t.Errorf("%d requests and %d retries, want 3 and 2", n, got)
	}
	if el > attempt/2 {
		t.Errorf("answered after %v: a resend waited for the attempt timeout (%v)", el, attempt)
	}
}
