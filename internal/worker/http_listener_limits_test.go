package worker_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// limitedWorker is a worker whose HTTP front has small limits, with
// timeouts of timeout, and the NATS URL it serves on.
func limitedWorker(t *testing.T, timeout time.Duration) (httpAddr, natsURL string) {
	t.Helper()
	ns := testenv.StartNATS(t)
	w := testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), Config: worker.Config{
		HTTPAddr: "127.0.0.1:0", HTTPPlain: true,
		HTTPReadHeaderTimeout: timeout,
		HTTPReadTimeout:       3 * timeout,
		HTTPIdleTimeout:       timeout,
		HTTPMaxHeaderBytes:    1 << 10,
		HTTPMaxConns:          2,
	}})
	return w.APIAddr(), ns.ClientURL()
}

// closedByServer reports whether the server closed c (a read ends with
// EOF or a reset) before the test's own bound, which only keeps a broken
// server from hanging the test.
func closedByServer(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestHTTPListenerCutsSlowClients: a client that sends its headers too
// slowly, trickles its body or idles on a keep-alive connection is cut
// off by the worker, and oversized headers are refused with 431.
func TestHTTPListenerCutsSlowClients(t *testing.T) {
	addr, _ := limitedWorker(t, 300*time.Millisecond)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		testenv.Must(t, err, "dialling the HTTP front")
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("headers never finished", func(t *testing.T) {
		c := dial()
		_, _ = c.Write([]byte("GET /nowhere HTTP/1.1\r\nHost: x\r\n"))
		if !closedByServer(t, c) {
			t.Fatal("a client that never finished its headers was kept")
		}
	})
	t.Run("body trickled", func(t *testing.T) {
		c := dial()
		_, _ = c.Write([]byte("POST /v1/manifest_digest HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n"))
		stop := make(chan struct{})
		go func() {
			for range 4000 {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}()
		defer close(stop)
		if !closedByServer(t, c) {
			t.Fatal("a client trickling its body was kept")
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial()
		_, _ = c.Write([]byte("GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		testenv.Must(t, err, "first answer")
		resp.Body.Close()
		if !closedByServer(t, c) {
			t.Fatal("an idle keep-alive connection was kept")
		}
	})
	t.Run("headers over the limit", func(t *testing.T) {
		// net/http allows 4 KiB of slack past MaxHeaderBytes.
		req, _ := http.NewRequest("GET", "http://"+addr+"/nowhere", nil)
		req.Header.Set("X-Padding", strings.Repeat("p", 16<<10))
		resp, err := http.DefaultClient.Do(req)
		testenv.Must(t, err, "request")
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("16 KiB of headers: %d, want 431", resp.StatusCode)
		}
	})
}

// TestHTTPConnectionCap: at --http-max-conns a new connection waits
// until one closes, and the NATS front answers meanwhile.
func TestHTTPConnectionCap(t *testing.T) {
	addr, natsURL := limitedWorker(t, time.Minute)
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		testenv.Must(t, err, "dialling")
		// Half a request: held open by the worker until its header
		// timeout.
		_, _ = c.Write([]byte("GET /nowhere HTTP/1.1\r\n"))
		held = append(held, c)
	}
	third, err := net.Dial("tcp", addr) // the kernel's backlog accepts it
	testenv.Must(t, err, "dialling a third")
	defer third.Close()
	_, _ = third.Write([]byte("GET /v1/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"))

	// The NATS front is not held up by the HTTP front's cap.
	_, err = testenv.Client(t, natsURL).Image(context.Background(), contract.ManifestDigest, "NOT A REFERENCE")
	if ce := contract.AsError(err); ce.Code != 400 {
		t.Fatalf("NATS request at the HTTP connection cap: %v, want its 400", err)
	}
	// Not answered while both connections are held…
	r := bufio.NewReader(third)
	_ = third.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := r.Peek(1); err == nil {
		t.Fatal("a third connection was served at --http-max-conns 2")
	}
	// …and answered once one closes.
	held[0].Close()
	_ = third.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	testenv.Must(t, err, "the third connection's answer")
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("third connection: %d, want 404", resp.StatusCode)
	}
	held[1].Close()
}
