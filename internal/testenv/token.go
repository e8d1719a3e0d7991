package testenv

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// TokenUser and TokenPass are the credentials a TokenRegistry's token
// endpoint accepts.
const TokenUser, TokenPass = "robot", "robot-pw"

// TokenRegistry is go-containerregistry's registry behind the distribution
// token protocol (as Docker Hub, GHCR, Harbor speak it), with a token
// endpoint that counts exchanges, tokens that the test can revoke, and blob
// GETs redirected to a separate "blob storage" server, as S3-backed
// registries do.
type TokenRegistry struct {
	Host   string
	Server *httptest.Server
	Blobs  *httptest.Server
	Push   *Registry

	Exchanges   atomic.Int64 // requests to the token endpoint
	Unauthed    atomic.Int64 // 401s served to registry requests
	BlobAuth    atomic.Int64 // blob-storage requests that carried Authorization
	BlobServed  atomic.Int64
	TokenFail   atomic.Int64 // when set, the token endpoint answers this status
	mu          sync.Mutex
	valid       map[string]bool
	issued      []string
	gate        chan struct{} // when set, the token endpoint waits for it
	gateAfter   int64         // close gate once this many 401s were served
	gateClosing *sync.Once
}

// StartTokenRegistry starts a TokenRegistry on loopback; it stops at
// cleanup.
func StartTokenRegistry(t testing.TB) *TokenRegistry {
	t.Helper()
	return StartTokenRegistryBlobsOn(t, "")
}

// StartTokenRegistryBlobsOn is StartTokenRegistry with blob storage
// listening on blobAddr (a loopback host:port; "" for httptest's
// default), so that a redirect goes to another host, not just another
// port.
func StartTokenRegistryBlobsOn(t testing.TB, blobAddr string) *TokenRegistry {
	t.Helper()
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	tr := &TokenRegistry{valid: map[string]bool{}}
	tr.Blobs = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			tr.BlobAuth.Add(1)
		}
		tr.BlobServed.Add(1)
		inner.ServeHTTP(w, r)
	}))
	if blobAddr != "" {
		ln, err := net.Listen("tcp", blobAddr)
		Must(t, err, "blob storage listener on %s", blobAddr)
		tr.Blobs.Listener.Close()
		tr.Blobs.Listener = ln
	}
	tr.Blobs.Start()
	t.Cleanup(tr.Blobs.Close)
	tr.Server = httptest.NewServer(http.HandlerFunc(tr.serve(inner)))
	t.Cleanup(tr.Server.Close)
	tr.Host = strings.TrimPrefix(tr.Server.URL, "http://")
	pushSrv := httptest.NewServer(inner) // fixtures go in without auth
	t.Cleanup(pushSrv.Close)
	tr.Push = &Registry{Host: strings.TrimPrefix(pushSrv.URL, "http://"), Server: pushSrv}
	return tr
}

func (tr *TokenRegistry) serve(inner http.Handler) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tr.Exchanges.Add(1)
			if code := int(tr.TokenFail.Load()); code != 0 {
				if code == http.StatusTooManyRequests {
					w.Header().Set("Retry-After", "7")
				}
				w.WriteHeader(code)
				return
			}
			if u, p, ok := r.BasicAuth(); !ok || u != TokenUser || p != TokenPass {
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
				return
			}
			tr.mu.Lock()
			gate := tr.gate
			tr.mu.Unlock()
			if gate != nil {
				select {
				case <-gate:
				case <-time.After(20 * time.Second): // the assertions will say what went wrong
				}
			}
			// Unguessable, so that a test can search every output for it.
			tok := fmt.Sprintf("token-%d-%s", tr.Exchanges.Load(), rand.Text())
			tr.mu.Lock()
			tr.valid[tok] = true
			tr.issued = append(tr.issued, tok)
			tr.mu.Unlock()
			_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": 300})
			return
		}
		tr.mu.Lock()
		ok := tr.valid[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		tr.mu.Unlock()
		if !ok {
			scope := ""
			if parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/", 2); len(parts) == 2 {
				scope = fmt.Sprintf(`,scope="repository:%s:pull"`, parts[0])
			}
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="regcap-test"%s`, tr.Host, scope))
			w.WriteHeader(http.StatusUnauthorized)
			tr.mu.Lock()
			gate, after, once := tr.gate, tr.gateAfter, tr.gateClosing
			tr.mu.Unlock()
			if n := tr.Unauthed.Add(1); after > 0 && n >= after {
				once.Do(func() { close(gate) })
			}
			return
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			http.Redirect(w, r, tr.Blobs.URL+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		inner.ServeHTTP(w, r)
	}
}

// Issued lists every token the endpoint handed out.
func (tr *TokenRegistry) Issued() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make([]string, 0, len(tr.issued))
	return append(out, tr.issued...)
}

// Expire revokes every token; the next token exchange waits until n
// requests have been refused, so that all n are in flight together when
// the refresh happens.
func (tr *TokenRegistry) Expire(n int64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.valid = map[string]bool{}
	tr.Unauthed.Store(0)
	tr.gate = make(chan struct{})
	tr.gateAfter = n
	tr.gateClosing = &sync.Once{}
}
