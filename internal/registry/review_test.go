package registry_test

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// Through a proxy the dial-time guard sees only the proxy's address: the
// target is checked before the proxy is used, as an IP literal and as a
// name resolving to a denied address. The proxy sees no connection for
// either; an allowed target still goes through it.
func TestGuardWithProxy(t *testing.T) {
	denied := listenCounting(t, "127.0.0.5:0")
	port := strconv.Itoa(denied.ln.Addr().(*net.TCPAddr).Port)
	proxy := listenCounting(t, "127.0.0.1:0")
	proxyURL := &url.URL{Scheme: "http", Host: proxy.ln.Addr().String()}
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
		if e.Code != 403 || !strings.Contains(e.Cause, "127.0.0.5") {
			t.Errorf("%s through a proxy: %d %q, want 403 naming 127.0.0.5", image, e.Code, e.Cause)
		}
	}
	if n := proxy.countBefore(t); n != 0 {
		t.Fatalf("the proxy saw %d connections for denied targets, want 0", n)
	}
	if n := denied.countBefore(t); n != 0 {
		t.Fatalf("the denied address saw %d connections, want 0", n)
	}
	// An allowed target is still sent through the proxy (which hangs up).
	ref, err := name.ParseReference("127.0.0.1:" + port + "/x/y:z")
	testenv.Must(t, err, "ref")
	_, err = c.Manifest(context.Background(), ref)
	if e := handlers.Classify(ref.Name(), err); e.Code == 403 {
		t.Fatalf("allowed target refused: %v", e)
	}
	// The proxy hung up on it, so it had accepted it; the 1 is the
	// sentinel connection of countBefore.
	if n := proxy.accepted.Load(); n <= 1 {
		t.Fatal("the proxy saw no connection for an allowed target")
	}
}
