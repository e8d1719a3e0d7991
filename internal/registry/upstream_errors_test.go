package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

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
	e := handlers.Classify(repo.Name(), err)
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
		e := handlers.Classify(repo.Name(), err)
		if e.Code != 502 || !strings.Contains(e.Message, storageHost) || strings.Contains(e.Message, "credentials") {
			t.Errorf("blob storage %d: %d %q, want 502 naming %s", status, e.Code, e.Message, storageHost)
		}
	}
}

// Token-endpoint failures during a request (a refresh after expiry): a 401
// says credentials were configured and refused; a 429 carries Retry-After.
func TestTokenEndpointFailuresExplained(t *testing.T) {
	tr := testenv.StartTokenRegistry(t)
	tr.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	c := tokenClient(t, tr.Host, registry.WithClock(func() time.Time { return time.Unix(0, now.Load()) }))
	ref, err := name.ParseReference(tr.Host + "/team/app:v1")
	testenv.Must(t, err, "ref")
	_, err = c.Manifest(context.Background(), ref)
	testenv.Must(t, err, "first manifest")

	tr.TokenFail.Store(http.StatusUnauthorized)
	now.Add(int64(time.Hour)) // past expires_in: the next request refreshes
	_, err = c.Manifest(context.Background(), ref)
	e := handlers.Classify(ref.Name(), err)
	if e.Code != 401 || !strings.Contains(e.Message, "refused the credentials configured") {
		t.Errorf("token endpoint 401 during a request: %d %q", e.Code, e.Message)
	}

	tr.TokenFail.Store(http.StatusTooManyRequests)
	_, err = c.Manifest(context.Background(), ref)
	e = handlers.Classify(ref.Name(), err)
	if e.Code != 429 || e.RetryAfter != "7" || !strings.Contains(e.Message, "retry after 7s") {
		t.Errorf("token endpoint 429 during a request: %d %q (Retry-After %q)", e.Code, e.Message, e.RetryAfter)
	}
}
