package registry_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/internal/capability"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// installHelper puts an executable docker-credential-<name> with the given
// shell body first on PATH.
func installHelper(t *testing.T, helper, body string) {
	t.Helper()
	dir := t.TempDir()
	testenv.Must(t, os.WriteFile(filepath.Join(dir, "docker-credential-"+helper), []byte("#!/bin/sh\n"+body), 0o755), "helper")
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// captureStderr runs f with os.Stderr redirected to a pipe and returns
// what was written to it.
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	testenv.Must(t, err, "pipe")
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&buf, r); close(done) }()
	saved := os.Stderr
	os.Stderr = w
	func() {
		defer func() { os.Stderr = saved }()
		f()
	}()
	w.Close()
	<-done
	r.Close()
	return buf.String()
}

// A credential helper that prints a secret and fails: the error (which
// becomes the reply message, and may be cached as a failure) and the
// worker's stderr never show what it printed, on stdout or stderr; they
// say how it failed. "credentials not found" still means anonymous.
func TestCredentialHelperOutputNeverShown(t *testing.T) {
	const outSecret, errSecret = "S3CRET-on-stdout-7731", "S3CRET-on-stderr-9912"
	installHelper(t, "leaky", "cat >/dev/null\n"+
		`echo '{"ServerURL":"x","Username":"robot","Secret":"`+outSecret+`"}'`+"\n"+
		"echo 'debug: token "+errSecret+"' >&2\nexit 1\n")
	installHelper(t, "garbled", "cat >/dev/null\necho 'Secret: "+outSecret+"'\n")
	installHelper(t, "none", "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1\n")
	dir := t.TempDir()
	repo, err := name.NewRepository("registry.regcap.test/x/y")
	testenv.Must(t, err, "repo")
	resolveWith := func(helper string) (authn.Authenticator, error) {
		p := filepath.Join(dir, helper+".json")
		testenv.Must(t, os.WriteFile(p, []byte(`{"credsStore":"`+helper+`"}`), 0o600), "config")
		kc, err := registry.LoadDockerConfig(p)
		testenv.Must(t, err, "config")
		return kc.Resolve(repo)
	}

	var err1 error
	stderr := captureStderr(t, func() { _, err1 = resolveWith("leaky") })
	if err1 == nil {
		t.Fatal("a failing helper gave no error")
	}
	t.Logf("failing helper: %v", err1)
	if strings.Contains(err1.Error(), "S3CRET") || strings.Contains(stderr, "S3CRET") {
		t.Errorf("a failing helper's output leaked:\n error: %q\nstderr: %q", err1, stderr)
	}
	if !strings.Contains(err1.Error(), "docker-credential-leaky") || !strings.Contains(err1.Error(), "exit status 1") {
		t.Errorf("error %q should name the helper and its exit status", err1)
	}

	_, err2 := resolveWith("garbled")
	if err2 == nil || strings.Contains(err2.Error(), "S3CRET") || !strings.Contains(err2.Error(), "not credentials JSON") {
		t.Errorf("helper answering garbage: %v", err2)
	}

	a, err := resolveWith("none")
	if err != nil || a != authn.Anonymous {
		t.Errorf("helper without credentials: %v, %v; want anonymous, no error", a, err)
	}
}

// A docker config with "auths": null, looked up concurrently: the lookup
// only reads the config (-race catches a write).
func TestDockerConfigNullAuthsConcurrent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.json")
	testenv.Must(t, os.WriteFile(p, []byte(`{"auths":null}`), 0o600), "config")
	kc, err := registry.LoadDockerConfig(p)
	testenv.Must(t, err, "config")
	repo, err := name.NewRepository("registry.regcap.test/x/y")
	testenv.Must(t, err, "repo")
	concurrently(t, 8, func() error {
		a, err := kc.Resolve(repo)
		if err == nil && a != authn.Anonymous {
			err = errors.New("credentials from an empty config")
		}
		return err
	})
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
	fetch := func(c *registry.Client) <-chan error {
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

// IPv4-mapped IPv6 prefixes in the deny list mean the IPv4 networks they
// map: CheckAddr sees addresses unmapped, so they must match.
func TestGuardMappedPrefixes(t *testing.T) {
	for _, c := range []struct {
		deny   string
		addr   string
		denied bool
	}{
		{"::ffff:127.0.0.5/128", "127.0.0.5", true},
		{"::ffff:127.0.0.5/128", "::ffff:127.0.0.5", true},
		{"::ffff:127.0.0.5/128", "127.0.0.6", false},
		{"::ffff:127.0.0.5", "127.0.0.5", true},
		{"::ffff:127.0.0.5", "::ffff:127.0.0.5", true},
		{"::ffff:127.0.0.0/104", "127.0.0.9", true},
		{"::ffff:127.0.0.0/104", "::ffff:127.1.2.3", true},
		{"::ffff:127.0.0.0/104", "128.0.0.1", false},
		{"::ffff:127.0.0.0/104", "::1", false},
		{"::ffff:0:0/96", "127.0.0.1", true},
		{"::ffff:0:0/96", "::1", false},
		{"127.0.0.0/8", "::ffff:127.0.0.1", true},
		{"::1/128", "::1", true},
		{"::1/128", "127.0.0.1", false},
		{"fe80::/10", "fe80::1", true},
	} {
		g, err := registry.NewGuard([]string{c.deny}, nil)
		testenv.Must(t, err, "guard %s", c.deny)
		err = g.CheckAddr(netip.MustParseAddr(c.addr))
		if (err != nil) != c.denied {
			t.Errorf("deny %s: CheckAddr(%s) = %v, want denied=%v", c.deny, c.addr, err, c.denied)
		}
		if err != nil && !errors.Is(err, registry.ErrDenied) {
			t.Errorf("deny %s: CheckAddr(%s): %v does not wrap ErrDenied", c.deny, c.addr, err)
		}
	}
}

// localhostIsLoopbackInHosts reports whether /etc/hosts maps localhost,
// and only to loopback addresses: then the resolver answers from the file
// and the test sends nothing to a DNS server.
func localhostIsLoopbackInHosts() bool {
	f, err := os.Open("/etc/hosts")
	if err != nil {
		return false
	}
	defer f.Close()
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(strings.SplitN(sc.Text(), "#", 2)[0])
		if len(fields) < 2 {
			continue
		}
		for _, n := range fields[1:] {
			if n != "localhost" {
				continue
			}
			a, err := netip.ParseAddr(fields[0])
			if err != nil || !a.IsLoopback() {
				return false
			}
			found = true
		}
	}
	return found
}

// A DNS name resolving to a denied address is refused on the production
// dial path (the system resolver, no lookup hook): 403, and the listener
// behind the address sees no connection.
func TestGuardDeniesResolvedNameProductionPath(t *testing.T) {
	if !localhostIsLoopbackInHosts() {
		// Resolving it could send the test's traffic off this machine.
		t.Fatal("this test needs /etc/hosts to map localhost to loopback addresses only, as Debian's does; it refuses to dial a name that may leave the host")
	}
	cl := testenv.ListenCounting(t, "127.0.0.1:0")
	port := cl.Port()
	g, err := registry.NewGuard([]string{"127.0.0.0/8", "::1/128"}, nil)
	testenv.Must(t, err, "guard")
	tr := registry.NewTransports(registry.WithDialGuard(g))
	t.Cleanup(tr.CloseIdleConnections)
	c := registry.New(registry.WithBaseTransport(tr.For))
	ref, err := name.ParseReference("localhost:" + port + "/x/y:z")
	testenv.Must(t, err, "ref")
	_, err = c.Manifest(context.Background(), ref)
	e := capability.Classify(ref.Name(), err)
	if e.Code != 403 || !strings.Contains(e.Message, "refused by policy") || !strings.Contains(e.Message, "--deny-cidrs") {
		t.Errorf("localhost with loopback denied: %d %q, want 403 from the guard", e.Code, e.Message)
	}
	if n := cl.CountBefore(t); n != 0 {
		t.Fatalf("the denied address saw %d connections, want 0", n)
	}
}

// Redirects to blob storage still work with the guard on (the default
// deny list, as the worker runs): a blob GET redirected to another
// loopback host:port is followed, the config is fetched, and blob storage
// gets no credentials.
func TestBlobRedirectWithDefaultGuard(t *testing.T) {
	tr := startTokenRegistryBlobsOn(t, "127.0.0.2:0")
	img := tr.push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	g, err := registry.NewGuard(registry.DefaultDenyCIDRs(), nil)
	testenv.Must(t, err, "guard")
	transports := registry.NewTransports(registry.WithDialGuard(g), registry.WithProxy(nil))
	t.Cleanup(transports.CloseIdleConnections)
	c := tokenClient(t, tr.host, registry.WithBaseTransport(transports.For))
	ref, err := name.ParseReference(tr.host + "/team/app:v1")
	testenv.Must(t, err, "ref")
	m, err := c.Manifest(context.Background(), ref)
	testenv.Must(t, err, "manifest")
	if !bytes.Equal(m.Body, img.Manifest) {
		t.Fatal("manifest differs")
	}
	b, err := c.Blob(context.Background(), ref.Context(), configDigest(t, img.Manifest))
	testenv.Must(t, err, "config blob through the redirect")
	if !bytes.Equal(b, img.Config) {
		t.Fatalf("config differs: %s", b)
	}
	if !strings.HasPrefix(tr.blobs.Listener.Addr().String(), "127.0.0.2:") {
		t.Fatalf("blob storage on %s, want another loopback host", tr.blobs.Listener.Addr())
	}
	if n := tr.blobServed.Load(); n != 1 {
		t.Errorf("blob storage served %d requests, want 1", n)
	}
	if n := tr.blobAuth.Load(); n != 0 {
		t.Errorf("%d blob storage requests carried the registry's Authorization", n)
	}
}
