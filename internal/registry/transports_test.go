package registry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// waitErr waits (at most 10 s) for an error sent on ch.
func waitErr(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

// A registry that never answers the ping: a caller joining the set-up
// returns at its own deadline, the caller that started the set-up can
// give up without failing the others, and the set-up, once the registry
// answers, serves a later joiner.
func TestTransportSetupJoinersOwnContext(t *testing.T) {
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "r/app", "v1", testenv.OCIManifest, "linux/amd64")
	reg.ResetCounts()
	gate := reg.Hold("/v2/")
	c := registry.New()
	ref, err := name.ParseReference(reg.Ref("r/app", "v1"))
	testenv.Must(t, err, "ref")
	fetch := func(ctx context.Context) <-chan error {
		ch := make(chan error, 1)
		go func() {
			m, err := c.Manifest(ctx, ref)
			if err == nil && string(m.Body) != string(img.Manifest) {
				err = errors.New("manifest differs")
			}
			ch <- err
		}()
		return ch
	}

	first, cancelFirst := context.WithCancel(context.Background())
	defer cancelFirst()
	errFirst := fetch(first)
	<-gate.Arrived()

	start := time.Now()
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	if err := waitErr(t, "a joiner with a 300ms deadline", fetch(short)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("joiner with a short deadline: %v, want its deadline", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("joiner with a 300ms deadline returned after %s", d)
	}

	cancelFirst()
	if err := waitErr(t, "the cancelled first caller", errFirst); !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v, want its cancellation", err)
	}

	long, cancelLong := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelLong()
	errLong := fetch(long)
	time.Sleep(100 * time.Millisecond) // let it join the set-up in flight
	gate.Release()
	if err := waitErr(t, "a joiner with a long deadline", errLong); err != nil {
		t.Errorf("after the first caller gave up, a joiner failed: %v", err)
	}
	if n := reg.Count("GET", "ping"); n != 1 {
		t.Errorf("%d pings, want 1 shared set-up", n)
	}
}

// The per-host transports are bounded, and an evicted host's idle
// connections are closed.
func TestTransportsBounded(t *testing.T) {
	const n, max = 12, 2
	var opened, closed atomic.Int64
	tr := registry.NewTransports(registry.WithMaxHosts(max))
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	for range n {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
		srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				opened.Add(1)
			case http.StateClosed:
				closed.Add(1)
			}
		}
		srv.Start()
		t.Cleanup(srv.Close)
		resp, err := hc.Get(srv.URL + "/v2/")
		testenv.Must(t, err, "GET")
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if h := tr.Hosts(); h > max {
		t.Errorf("%d hosts keep a transport, want at most %d", h, max)
	}
	testenv.Eventually(t, "idle connections of evicted hosts closed", func() bool { return closed.Load() >= n/2 })
	t.Logf("%d connections opened, %d closed by eviction", opened.Load(), closed.Load())
}

// reloadKeychain is an anonymous keychain whose Reload reports a change
// once after the test asks for it, as DockerConfig does after the file
// was rewritten.
type reloadKeychain struct{ changed atomic.Bool }

func (k *reloadKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.Anonymous, nil
}

func (k *reloadKeychain) Reload() (bool, error) { return k.changed.Swap(false), nil }

// A Flush (credentials changed) while a transport set-up is in flight: the
// set-up, built from the credentials of before, answers the callers that
// were waiting for it, but is neither joined by callers after the Flush
// nor kept for later ones.
func TestFlushDuringTransportSetup(t *testing.T) {
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "r/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref, err := name.ParseReference(reg.Ref("r/app", "v1"))
	testenv.Must(t, err, "ref")
	fetch := func(c *registry.Puller) <-chan error {
		ch := make(chan error, 1)
		go func() {
			m, err := c.Manifest(context.Background(), ref)
			if err == nil && !bytes.Equal(m.Body, img.Manifest) {
				err = errors.New("manifest differs")
			}
			ch <- err
		}()
		return ch
	}
	pings := func() int { return reg.Count("GET", "ping") }

	t.Run("not kept", func(t *testing.T) {
		reg.ResetCounts()
		gate := reg.Hold("/v2/")
		c := registry.New()
		errA := fetch(c)
		<-gate.Arrived()
		c.Flush()
		gate.Release()
		testenv.Must(t, waitErr(t, "the set-up in flight", errA), "fetch during the flush")
		testenv.Must(t, waitErr(t, "a fetch after the flush", fetch(c)), "fetch after the flush")
		if n := pings(); n != 2 {
			t.Errorf("%d pings, want 2: the transport set up before the flush was kept", n)
		}
	})

	t.Run("not joined", func(t *testing.T) {
		reg.ResetCounts()
		gate := reg.Hold("/v2/")
		kc := &reloadKeychain{}
		c := registry.New(registry.WithKeychain(kc))
		errA := fetch(c)
		<-gate.Arrived()
		kc.changed.Store(true) // the next set-up sees the file changed
		errB := fetch(c)
		// B sets up its own transport rather than waiting for A's.
		testenv.Eventually(t, "a second ping, from the caller after the reload", func() bool { return pings() == 2 })
		gate.Release()
		testenv.Must(t, waitErr(t, "the set-up before the reload", errA), "fetch before the reload")
		testenv.Must(t, waitErr(t, "the set-up after the reload", errB), "fetch after the reload")
		// B's transport is the one kept.
		testenv.Must(t, waitErr(t, "a later fetch", fetch(c)), "later fetch")
		if n := pings(); n != 2 {
			t.Errorf("%d pings, want 2 (the later fetch reuses the transport set up after the reload)", n)
		}
	})
}
