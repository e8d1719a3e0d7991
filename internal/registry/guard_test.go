package registry_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
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
		e := handlers.Classify(ref.Name(), err)
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
	if e := handlers.Classify(ref.Name(), err); e.Code == 403 {
		t.Fatalf("allowed target refused: %v", e)
	}
	// The proxy hung up on it, so it had accepted it.
	if n := proxy.Accepted(); n < 1 {
		t.Fatal("the proxy saw no connection for an allowed target")
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
	e := handlers.Classify(ref.Name(), err)
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
	tr := testenv.StartTokenRegistryBlobsOn(t, "127.0.0.2:0")
	img := tr.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	g, err := registry.NewGuard(registry.DefaultDenyCIDRs(), nil)
	testenv.Must(t, err, "guard")
	transports := registry.NewTransports(registry.WithDialGuard(g), registry.WithProxy(nil))
	t.Cleanup(transports.CloseIdleConnections)
	c := tokenClient(t, tr.Host, registry.WithBaseTransport(transports.For))
	ref, err := name.ParseReference(tr.Host + "/team/app:v1")
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
	if !strings.HasPrefix(tr.Blobs.Listener.Addr().String(), "127.0.0.2:") {
		t.Fatalf("blob storage on %s, want another loopback host", tr.Blobs.Listener.Addr())
	}
	if n := tr.BlobServed.Load(); n != 1 {
		t.Errorf("blob storage served %d requests, want 1", n)
	}
	if n := tr.BlobAuth.Load(); n != 0 {
		t.Errorf("%d blob storage requests carried the registry's Authorization", n)
	}
}

func TestNumericIPv4(t *testing.T) {
	for _, c := range []struct{ host, want string }{
		{"2130706433", "127.0.0.1"},
		{"0x7f000005", "127.0.0.5"},
		{"0X7F000005", "127.0.0.5"},
		{"0177.0.0.5", "127.0.0.5"},
		{"127.5", "127.0.0.5"},
		{"127.0.5", "127.0.0.5"},
		{"127.0.0.05", "127.0.0.5"},
		{"0", "0.0.0.0"},
		{"127.0.0.1", "127.0.0.1"},
		{"4294967296", ""},
		{"256.0.0.1", ""},
		{"127.65536", "127.1.0.0"},
		{"127.16777216", ""},
		{"1.2.3.4.5", ""},
		{"08", ""},
		{"0x", ""},
		{"cafe", ""},
		{"registry.local", ""},
		{"", ""},
		{"1..2", ""},
	} {
		ip, ok := registry.NumericIPv4(c.host)
		if got := map[bool]string{true: ip.String(), false: ""}[ok]; got != c.want {
			t.Errorf("%q: %q, want %q", c.host, got, c.want)
		}
	}
}

// TestGuardCannotBeWalkedAround: addresses that reach a denied or local
// host without naming it the way the deny list does are judged by what
// they dial. With only 127.0.0.5 denied, each request below is answered
// 403 before any connection: the listeners on 127.0.0.1, ::1 and
// 127.0.0.5 accept none. A numeric form of an allowed address does
// connect, so the notation really is understood.
func TestGuardCannotBeWalkedAround(t *testing.T) {
	local := testenv.ListenCounting(t, "127.0.0.1:0")
	port := local.Port()
	local6 := testenv.ListenCounting(t, "[::1]:"+port)
	denied := testenv.ListenCounting(t, "127.0.0.5:"+port)
	g, err := registry.NewGuard([]string{"127.0.0.5/32"}, nil)
	testenv.Must(t, err, "guard")
	tr := registry.NewTransports(registry.WithDialGuard(g))
	t.Cleanup(tr.CloseIdleConnections)
	c := registry.New(registry.WithBaseTransport(tr.For), registry.WithInsecure(func(string) bool { return true }))
	fetch := func(host string) (*contract.Error, error) {
		ref, err := name.ParseReference(host + ":" + port + "/x/y:z")
		testenv.Must(t, err, "ref %s", host)
		_, err = handlers.NewFetcher(c).Fetch(context.Background(), handlers.Request{Function: contract.OCIManifest, Ref: ref})
		var ce *contract.Error
		errors.As(err, &ce)
		return ce, err
	}
	for _, c := range []struct{ host, why string }{
		{"0.0.0.0", "never dialled"},
		{"0.1.2.3", "never dialled"},
		{"0", "never dialled"},
		{"[::]", "never dialled"},
		{"[::ffff:0.0.0.0]", "never dialled"},
		{"224.0.0.1", "never dialled"},
		{"[ff02::1]", "never dialled"},
		{"255.255.255.255", "never dialled"},
		{"127.0.0.5", "--deny-cidrs"},
		{"[::ffff:127.0.0.5]", "--deny-cidrs"},
		{"[::ffff:7f00:5]", "--deny-cidrs"},
		{"2130706437", "--deny-cidrs"},
		{"0x7f000005", "--deny-cidrs"},
		{"0177.0.0.5", "--deny-cidrs"},
		{"127.5", "--deny-cidrs"},
		{"127.0.0.05", "--deny-cidrs"},
	} {
		ce, err := fetch(c.host)
		if ce == nil || ce.Code != 403 || !strings.Contains(ce.Message, c.why) {
			t.Errorf("%s: %v, want 403 saying %q", c.host, err, c.why)
		}
	}
	for _, l := range []*testenv.CountingListener{local, local6, denied} {
		if n := l.CountBefore(t); n != 0 {
			t.Errorf("%s accepted %d connections, want 0", l.Addr(), n)
		}
	}
	// 2130706433 is 127.0.0.1, which is allowed: it is dialled there.
	if _, _ = fetch("2130706433"); local.CountBefore(t) == 0 {
		t.Error("2130706433 did not connect to 127.0.0.1: the notation is not understood")
	}
}
