package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/internal/capability"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// Through a proxy the dial-time guard sees only the proxy's address: the
// target is checked before the proxy is used, as an IP literal and as a
// name resolving to a denied address. The proxy sees no connection for
// either; an allowed target still goes through it.
func TestGuardWithProxy(t *testing.T) {
	denied := testenv.ListenCounting(t, "127.0.0.5:0")
	port := denied.Port()
	proxy := testenv.ListenCounting(t, "127.0.0.1:0")
	proxyURL := &url.URL{Scheme: "http", Host: proxy.Addr()}
	g, err := registry.NewGuard([]string{"127.0.0.5/32"}, nil)
	testenv.Must(t, err, "guard")
	tr := registry.NewTransports(registry.WithDialGuard(g), registry.WithLookup(testLookup),
		registry.WithProxy(http.ProxyURL(proxyURL)))
	t.Cleanup(tr.CloseIdleConnections)
	c := registry.New(registry.WithBaseTransport(tr.For),
		registry.WithInsecure(func(h string) bool { return strings.HasSuffix(h, ".regcap.test:"+port) }))
	for _, image := range []string{"127.0.0.5:" + port + "/x/y:z", "denied.regcap.test:" + port + "/x/y:z"} {
		ref, err := name.ParseReference(image)
		testenv.Must(t, err, "ref")
		_, err = c.Manifest(context.Background(), ref)
		e := capability.Classify(ref.Name(), err)
		if e.Code != 403 || !strings.Contains(e.Message, "127.0.0.5") {
			t.Errorf("%s through a proxy: %d %q, want 403 naming 127.0.0.5", image, e.Code, e.Message)
		}
	}
	if n := proxy.CountBefore(t); n != 0 {
		t.Fatalf("the proxy saw %d connections for denied targets, want 0", n)
	}
	if n := denied.CountBefore(t); n != 0 {
		t.Fatalf("the denied address saw %d connections, want 0", n)
	}
	// An allowed target is still sent through the proxy (which hangs up).
	ref, err := name.ParseReference("127.0.0.1:" + port + "/x/y:z")
	testenv.Must(t, err, "ref")
	_, err = c.Manifest(context.Background(), ref)
	if e := capability.Classify(ref.Name(), err); e.Code == 403 {
		t.Fatalf("allowed target refused: %v", e)
	}
	// The proxy hung up on it, so it had accepted it.
	if n := proxy.Accepted(); n < 1 {
		t.Fatal("the proxy saw no connection for an allowed target")
	}
}

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

// A credential helper that hangs is killed after the helper timeout, and
// the lookup fails instead of hanging the set-up.
func TestCredentialHelperTimeout(t *testing.T) {
	dir := t.TempDir()
	testenv.Must(t, os.WriteFile(filepath.Join(dir, "docker-credential-hang"), []byte("#!/bin/sh\nexec sleep 60\n"), 0o755), "helper")
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	p := filepath.Join(dir, "config.json")
	testenv.Must(t, os.WriteFile(p, []byte(`{"credsStore":"hang"}`), 0o600), "config")
	kc, err := registry.LoadDockerConfig(p, registry.WithHelperTimeout(200*time.Millisecond))
	testenv.Must(t, err, "config")
	repo, err := name.NewRepository("registry.regcap.test/x/y")
	testenv.Must(t, err, "repo")
	start := time.Now()
	ch := make(chan error, 1)
	go func() { _, err := kc.Resolve(repo); ch <- err }()
	err = waitErr(t, "a hanging credential helper", ch)
	if err == nil || !strings.Contains(err.Error(), "docker-credential-hang") {
		t.Errorf("hanging helper: %v, want an error naming it", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("hanging helper returned after %s, want about the 200ms timeout", d)
	}
	// The caller's context ends it too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	kc2, err := registry.LoadDockerConfig(p)
	testenv.Must(t, err, "config")
	go func() { _, err := kc2.ResolveContext(ctx, repo); ch <- err }()
	if err := waitErr(t, "a hanging credential helper under a deadline", ch); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging helper under a 100ms deadline: %v", err)
	}
}

// A redirect to a presigned blob URL that fails: the answer names the
// host but never the signature in the query.
func TestPresignedURLRedacted(t *testing.T) {
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "r/app", "v1", testenv.OCIManifest, "linux/amd64")
	closed := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/blobs/sha256:") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://"+closed+r.URL.Path+"?X-Amz-Signature=secret-sig&X-Amz-Credential=secret-cred", http.StatusTemporaryRedirect)
		}))
	d := configDigest(t, img.Manifest)
	repo, err := name.NewRepository(reg.Host + "/r/app")
	testenv.Must(t, err, "repo")
	_, err = registry.New().Blob(context.Background(), repo, d)
	if err == nil {
		t.Fatal("blob from a closed port succeeded")
	}
	e := capability.Classify(repo.Name(), err)
	if strings.Contains(e.Error(), "secret") || strings.Contains(err.Error(), "secret") || !strings.Contains(e.Error(), closed) {
		t.Fatalf("presigned URL in the error: %d %q", e.Code, e.Error())
	}
}

func configDigest(t *testing.T, manifest []byte) v1.Hash {
	t.Helper()
	var m struct{ Config struct{ Digest string } }
	testenv.Must(t, json.Unmarshal(manifest, &m), "manifest")
	d, err := v1.NewHash(m.Config.Digest)
	testenv.Must(t, err, "digest")
	return d
}

// Blob storage answering 401 or 403 to a redirect is an upstream fault
// (502) naming its host, not the registry refusing our credentials.
func TestBlobStorageRefusalIsNotAccessError(t *testing.T) {
	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
		t.Cleanup(storage.Close)
		storageHost := strings.TrimPrefix(storage.URL, "http://")
		reg := testenv.StartRegistry(t)
		img := reg.PushImage(t, "r/app", "v1", testenv.OCIManifest, "linux/amd64")
		reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/blobs/sha256:") },
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, storage.URL+r.URL.Path, http.StatusTemporaryRedirect)
			}))
		repo, err := name.NewRepository(reg.Host + "/r/app")
		testenv.Must(t, err, "repo")
		_, err = registry.New().Blob(context.Background(), repo, configDigest(t, img.Manifest))
		var ae *registry.AccessError
		if errors.As(err, &ae) {
			t.Errorf("blob storage %d reported as the registry's access error: %v", status, err)
		}
		e := capability.Classify(repo.Name(), err)
		if e.Code != 502 || !strings.Contains(e.Message, storageHost) || strings.Contains(e.Message, "credentials") {
			t.Errorf("blob storage %d: %d %q, want 502 naming %s", status, e.Code, e.Message, storageHost)
		}
	}
}

// Token-endpoint failures during a request (a refresh after expiry): a 401
// says credentials were configured and refused; a 429 carries Retry-After.
func TestTokenEndpointFailuresExplained(t *testing.T) {
	tr := startTokenRegistry(t)
	tr.push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	c := tokenClient(t, tr.host, registry.WithClock(func() time.Time { return time.Unix(0, now.Load()) }))
	ref, err := name.ParseReference(tr.host + "/team/app:v1")
	testenv.Must(t, err, "ref")
	_, err = c.Manifest(context.Background(), ref)
	testenv.Must(t, err, "first manifest")

	tr.tokenFail.Store(http.StatusUnauthorized)
	now.Add(int64(time.Hour)) // past expires_in: the next request refreshes
	_, err = c.Manifest(context.Background(), ref)
	e := capability.Classify(ref.Name(), err)
	if e.Code != 401 || !strings.Contains(e.Message, "refused the credentials configured") {
		t.Errorf("token endpoint 401 during a request: %d %q", e.Code, e.Message)
	}

	tr.tokenFail.Store(http.StatusTooManyRequests)
	_, err = c.Manifest(context.Background(), ref)
	e = capability.Classify(ref.Name(), err)
	if e.Code != 429 || e.RetryAfter != "7" || !strings.Contains(e.Message, "retry after 7s") {
		t.Errorf("token endpoint 429 during a request: %d %q (Retry-After %q)", e.Code, e.Message, e.RetryAfter)
	}
}

// The default deny list cannot be changed by a caller for the others.
func TestDefaultDenyCIDRsIsACopy(t *testing.T) {
	d := registry.DefaultDenyCIDRs()
	d[0] = "127.0.0.0/8"
	if got := registry.DefaultDenyCIDRs(); got[0] != "169.254.0.0/16" {
		t.Fatalf("a caller changed the default deny list: %v", got)
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
