package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

func tokenClient(t *testing.T, host string, opts ...registry.Option) *registry.Puller {
	t.Helper()
	dir := t.TempDir()
	cfg := dockerConfigFor(host, testenv.TokenUser, testenv.TokenPass)
	testenv.Must(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600), "config")
	kc, err := registry.LoadDockerConfig(filepath.Join(dir, "config.json"))
	testenv.Must(t, err, "docker config")
	return registry.New(append([]registry.Option{registry.WithKeychain(kc)}, opts...)...)
}

// concurrently runs f n times at once and fails on any error.
func concurrently(t *testing.T, n int, f func() error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestTokenReuse counts token-endpoint requests: N cold requests for one
// repository make one exchange; after the token expires, N concurrent
// requests make one refresh between them; another repository (scope) gets
// its own token. Blob redirects to storage work and carry no credentials.
func TestTokenReuse(t *testing.T) {
	const n = 16
	tr := testenv.StartTokenRegistry(t)
	img := tr.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	other := tr.Push.PushImage(t, "team/other", "v1", testenv.OCIManifest, "linux/amd64")
	c := tokenClient(t, tr.Host)
	ref, err := name.ParseReference(tr.Host + "/team/app:v1")
	testenv.Must(t, err, "ref")
	var m struct {
		Config struct{ Digest string }
	}
	testenv.Must(t, json.Unmarshal(img.Manifest, &m), "manifest")
	cfgDigest, err := v1.NewHash(m.Config.Digest)
	testenv.Must(t, err, "digest")

	fetch := func() error {
		got, err := c.Manifest(context.Background(), ref)
		if err != nil {
			return err
		}
		if !bytes.Equal(got.Body, img.Manifest) {
			return fmt.Errorf("manifest differs: %s", got.Body)
		}
		return nil
	}

	concurrently(t, n, fetch)
	if got := tr.Exchanges.Load(); got != 1 {
		t.Fatalf("%d cold requests made %d token exchanges, want 1", n, got)
	}
	t.Logf("cold: %d concurrent requests, %d token exchange(s)", n, tr.Exchanges.Load())

	concurrently(t, n, func() error {
		b, err := c.Blob(context.Background(), ref.Context(), cfgDigest)
		if err == nil && !bytes.Equal(b, img.Config) {
			err = fmt.Errorf("config differs: %s", b)
		}
		return err
	})
	if tr.BlobServed.Load() != n {
		t.Errorf("blob storage served %d requests, want %d (redirects not followed?)", tr.BlobServed.Load(), n)
	}
	if tr.BlobAuth.Load() != 0 {
		t.Errorf("%d requests to blob storage carried the registry's Authorization", tr.BlobAuth.Load())
	}
	if got := tr.Exchanges.Load(); got != 1 {
		t.Fatalf("token exchanges after blob fetches: %d, want 1", got)
	}

	tr.Expire(n)
	concurrently(t, n, fetch)
	if got := tr.Unauthed.Load(); got != n {
		t.Errorf("%d requests saw the expired token, want all %d in flight together", got, n)
	}
	if got := tr.Exchanges.Load() - 1; got != 1 {
		t.Fatalf("after expiry, %d concurrent requests made %d refreshes, want 1", n, got)
	}
	t.Logf("after expiry: %d concurrent requests, %d refresh(es)", n, tr.Exchanges.Load()-1)

	// Another repository is another scope: its own token, once.
	oref, err := name.ParseReference(tr.Host + "/team/other:v1")
	testenv.Must(t, err, "ref")
	concurrently(t, n, func() error {
		got, err := c.Manifest(context.Background(), oref)
		if err == nil && !bytes.Equal(got.Body, other.Manifest) {
			err = fmt.Errorf("other manifest differs")
		}
		return err
	})
	if got := tr.Exchanges.Load(); got != 3 {
		t.Fatalf("token exchanges after a second repository: %d, want 3", got)
	}
}

// TestTokenRefreshBaseline measures what ggcr's own bearer transport does
// in the same situation, to record why regcap does not use it: it
// refreshes once per request that sees the expired token.
func TestTokenRefreshBaseline(t *testing.T) {
	const n = 16
	tr := testenv.StartTokenRegistry(t)
	tr.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	repo, err := name.NewRepository(tr.Host + "/team/app")
	testenv.Must(t, err, "repo")
	auth := authn.FromConfig(authn.AuthConfig{Username: testenv.TokenUser, Password: testenv.TokenPass})
	rt, err := transport.NewWithContext(context.Background(), repo.Registry, auth, http.DefaultTransport, []string{repo.Scope(transport.PullScope)})
	testenv.Must(t, err, "ggcr transport")
	get := func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://"+tr.Host+"/v2/team/app/manifests/v1", nil)
		req.Header.Set("Accept", testenv.OCIManifest)
		resp, err := (&http.Client{Transport: rt}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	before := tr.Exchanges.Load()
	tr.Expire(n)
	concurrently(t, n, get)
	t.Logf("ggcr bearer transport, after expiry: %d concurrent requests, %d refreshes (regcap: 1)", n, tr.Exchanges.Load()-before)
}

// TestTokenExpiresIn: a token past its expires_in is refreshed before it
// is sent, once for all concurrent requests, and no request is refused.
func TestTokenExpiresIn(t *testing.T) {
	const n = 16
	tr := testenv.StartTokenRegistry(t)
	img := tr.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	c := tokenClient(t, tr.Host, registry.WithClock(func() time.Time { return time.Unix(0, now.Load()) }))
	ref, err := name.ParseReference(tr.Host + "/team/app:v1")
	testenv.Must(t, err, "ref")
	fetch := func() error {
		got, err := c.Manifest(context.Background(), ref)
		if err == nil && !bytes.Equal(got.Body, img.Manifest) {
			err = fmt.Errorf("manifest differs")
		}
		return err
	}
	concurrently(t, n, fetch)
	if got := tr.Exchanges.Load(); got != 1 {
		t.Fatalf("cold: %d exchanges, want 1", got)
	}
	// Still valid (the registry says 300 s): no exchange.
	now.Add(int64(200 * time.Second))
	concurrently(t, n, fetch)
	if got := tr.Exchanges.Load(); got != 1 {
		t.Fatalf("within expires_in: %d exchanges, want 1", got)
	}
	// Past it: one refresh for all, before sending, so no 401s. (The
	// cold phase's ping was refused, as pings are: reset the count.)
	tr.Unauthed.Store(0)
	now.Add(int64(200 * time.Second))
	concurrently(t, n, fetch)
	if got := tr.Exchanges.Load(); got != 2 {
		t.Fatalf("past expires_in: %d exchanges, want 2", got)
	}
	if got := tr.Unauthed.Load(); got != 0 {
		t.Errorf("%d requests were sent with an expired token", got)
	}
}

// A registry's 401 at the token endpoint and its 403 on a repository are
// explained: whether credentials were configured, never what they are.
func TestAccessErrorsExplained(t *testing.T) {
	tr := testenv.StartTokenRegistry(t)
	tr.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	ref, err := name.ParseReference(tr.Host + "/team/app:v1")
	testenv.Must(t, err, "ref")

	dir := t.TempDir()
	p := filepath.Join(dir, "config.json")
	testenv.Must(t, os.WriteFile(p, []byte(dockerConfigFor(tr.Host, testenv.TokenUser, "wrong-pw-123")), 0o600), "config")
	kc, err := registry.LoadDockerConfig(p)
	testenv.Must(t, err, "config")
	_, err = registry.New(registry.WithKeychain(kc)).Manifest(context.Background(), ref)
	e := handlers.Classify(ref.Name(), err)
	if e.Code != 401 || !strings.Contains(e.Message, "refused the credentials configured") || strings.Contains(e.Error(), "wrong-pw-123") {
		t.Errorf("wrong password at the token endpoint: %d %q", e.Code, e.Error())
	}

	_, err = registry.New().Manifest(context.Background(), ref)
	e = handlers.Classify(ref.Name(), err)
	if e.Code != 401 || !strings.Contains(e.Message, "none were found") {
		t.Errorf("anonymous at the token endpoint: %d %q", e.Code, e.Error())
	}

	// The registry denies the repository to these (valid) credentials.
	tr.Server.Config.Handler = denyRepo(tr.Server.Config.Handler, "/v2/team/app/manifests/")
	_, err = tokenClient(t, tr.Host).Manifest(context.Background(), ref)
	e = handlers.Classify(ref.Name(), err)
	if e.Code != 403 || !strings.Contains(e.Message, "denied access with the credentials configured") {
		t.Errorf("403: %d %q", e.Code, e.Error())
	}
}

func denyRepo(next http.Handler, prefix string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, prefix) && r.Header.Get("Authorization") != "" {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// A redirect (to "blob storage") that points at a denied address is
// refused at dial time too, and the address sees no connection.
func TestGuardDeniesRedirect(t *testing.T) {
	cl := testenv.ListenCounting(t, "127.0.0.5:0")
	reg := testenv.StartRegistry(t)
	img := reg.PushImage(t, "r/app", "v1", testenv.OCIManifest, "linux/amd64")
	reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/blobs/sha256:") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://"+cl.Addr()+r.URL.Path, http.StatusTemporaryRedirect)
		}))
	g, err := registry.NewGuard([]string{"127.0.0.5/32"}, nil)
	testenv.Must(t, err, "guard")
	tr := registry.NewTransports(registry.WithDialGuard(g))
	c := registry.New(registry.WithBaseTransport(tr.For))
	var m struct{ Config struct{ Digest string } }
	testenv.Must(t, json.Unmarshal(img.Manifest, &m), "manifest")
	d, err := v1.NewHash(m.Config.Digest)
	testenv.Must(t, err, "digest")
	repo, err := name.NewRepository(reg.Host + "/r/app")
	testenv.Must(t, err, "repo")
	_, err = c.Blob(context.Background(), repo, d)
	if e := handlers.Classify(repo.Name(), err); e.Code != 403 || !strings.Contains(e.Message, "127.0.0.5") {
		t.Fatalf("redirect to a denied address: %v", e)
	}
	if n := cl.CountBefore(t); n != 0 {
		t.Fatalf("denied address saw %d connections, want 0", n)
	}
}
