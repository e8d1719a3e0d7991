package registry_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/mirrors"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// copyImage puts img, byte for byte, into dst as repo:tag.
func copyImage(t *testing.T, dst *testenv.Registry, repo, tag string, img testenv.Image) {
	t.Helper()
	dst.PushBlob(t, repo, img.Config)
	dst.PushManifest(t, repo, img.Digest, img.MediaType, img.Manifest)
	if tag != "" {
		dst.PushManifest(t, repo, tag, img.MediaType, img.Manifest)
	}
}

// hostsDir writes hosts.toml for registry (host:port) and returns the
// directory to give mirrors.WithHostsDir.
func hostsDir(t *testing.T, registry, toml string) string {
	t.Helper()
	dir := t.TempDir()
	folder := filepath.Join(dir, strings.Replace(registry, ":", "_", 1)+"_")
	testenv.Must(t, os.MkdirAll(folder, 0o755), "mkdir")
	testenv.Must(t, os.WriteFile(filepath.Join(folder, "hosts.toml"), []byte(toml), 0o644), "write")
	return dir
}

func hostLine(host string, caps ...string) string {
	s := "[host.\"http://" + host + "\"]\n"
	if len(caps) > 0 {
		s += "capabilities = [\"" + strings.Join(caps, "\", \"") + "\"]\n"
	}
	return s
}

// manifestRequests counts HEAD and GET of manifests.
func manifestRequests(r *testenv.Registry) int {
	return r.Count("HEAD", "manifest") + r.Count("GET", "manifest")
}

type fetchLog struct {
	mu sync.Mutex
	f  []registry.Fetch
}

func (l *fetchLog) add(f registry.Fetch) { l.mu.Lock(); l.f = append(l.f, f); l.mu.Unlock() }

func TestMirrorsTriedInFileOrder(t *testing.T) {
	up := testenv.StartRegistry(t)
	img := up.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	empty, second, third := testenv.StartRegistry(t), testenv.StartRegistry(t), testenv.StartRegistry(t)
	copyImage(t, second, "team/app", "v1", img)
	copyImage(t, third, "team/app", "v1", img)
	var (
		mu  sync.Mutex
		ns  []string
		hdr []string
	)
	second.Override(func(r *http.Request) bool {
		mu.Lock()
		ns = append(ns, r.URL.Query().Get("ns"))
		hdr = append(hdr, r.Header.Get("X-Mirror-Token"))
		mu.Unlock()
		return false
	}, nil)
	// Names chosen so that neither map nor alphabetical order is the
	// file's: empty (z…), second, third.
	dir := hostsDir(t, up.Host, "server = \"http://"+up.Host+"\"\n"+
		hostLine(empty.Host)+hostLine(second.Host)+"[host.\"http://"+second.Host+"\".header]\nx-mirror-token = \"s3cret\"\n"+hostLine(third.Host))
	var log fetchLog
	p := registry.New(registry.WithEndpoints(mirrors.New(mirrors.WithHostsDir(dir))), registry.WithFetchObserver(log.add))
	ref, err := name.ParseReference(up.Ref("team/app", "v1"))
	testenv.Must(t, err, "ref")
	d, ok, err := p.Head(context.Background(), ref)
	if err != nil || !ok || d.String() != img.Digest {
		t.Fatalf("Head = %v %v %v, want %s", d, ok, err, img.Digest)
	}
	if n := manifestRequests(empty); n != 1 {
		t.Errorf("first mirror (404) got %d manifest requests, want 1", n)
	}
	if n := manifestRequests(second); n != 1 {
		t.Errorf("second mirror got %d manifest requests, want 1", n)
	}
	if n, m := manifestRequests(third), manifestRequests(up); n+m != 0 {
		t.Errorf("after an answer: third mirror %d, upstream %d manifest requests, want 0", n, m)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ns) == 0 || ns[len(ns)-1] != up.Host || hdr[len(hdr)-1] != "s3cret" {
		t.Errorf("mirror saw ns=%q header=%q, want ns=%s and the configured header", ns, hdr, up.Host)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	last := log.f[len(log.f)-1]
	if last.Err != nil || last.Endpoint != second.Host || !last.Mirror || last.Registry != up.Host {
		t.Errorf("last fetch observed: %+v, want served by %s", last, second.Host)
	}
}

// Each failure kind of a mirror moves on to the next endpoint, which
// answers; a 429 is not retried on the mirror.
func TestMirrorFallbackOnEachFailure(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, m *testenv.Registry) (host string)
	}{
		{"404", func(t *testing.T, m *testenv.Registry) string { return m.Host }},
		{"500", func(t *testing.T, m *testenv.Registry) string {
			m.Override(func(r *http.Request) bool { return testenv.Kind(r.URL.Path) == "manifest" },
				http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }))
			return m.Host
		}},
		{"503", func(t *testing.T, m *testenv.Registry) string {
			m.Override(func(r *http.Request) bool { return testenv.Kind(r.URL.Path) == "manifest" },
				http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) }))
			return m.Host
		}},
		{"429", func(t *testing.T, m *testenv.Registry) string {
			m.Override(func(r *http.Request) bool { return testenv.Kind(r.URL.Path) == "manifest" },
				http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Retry-After", "60")
					w.WriteHeader(429)
				}))
			return m.Host
		}},
		{"refused", func(t *testing.T, _ *testenv.Registry) string {
			return "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
		}},
		{"hangs", func(t *testing.T, m *testenv.Registry) string {
			m.Hold("/manifests/")
			return m.Host
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := testenv.StartRegistry(t)
			img := up.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
			m := testenv.StartRegistry(t)
			host := tc.setup(t, m)
			dir := hostsDir(t, up.Host, hostLine(host))
			p := registry.New(registry.WithEndpoints(mirrors.New(mirrors.WithHostsDir(dir))))
			ref, err := name.ParseReference(up.Ref("team/app", "v1"))
			testenv.Must(t, err, "ref")
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
			defer cancel()
			got, err := p.Manifest(ctx, ref)
			if err != nil {
				t.Fatalf("Manifest: %v", err)
			}
			if got.Digest.String() != img.Digest {
				t.Fatalf("digest %s, want %s", got.Digest, img.Digest)
			}
			if n := up.Count("GET", "manifest"); n != 1 {
				t.Fatalf("upstream got %d manifest GETs, want 1", n)
			}
			if tc.name != "refused" {
				if n := manifestRequests(m); n != 1 {
					t.Fatalf("mirror got %d manifest requests, want exactly 1 (no retry)", n)
				}
			}
		})
	}
}

// When every endpoint fails, the answer comes from the last one and names
// every endpoint tried: a 404 everywhere is a 404; a 429 from the last is
// a 429 with its Retry-After.
func TestMirrorsAllFail(t *testing.T) {
	up, m := testenv.StartRegistry(t), testenv.StartRegistry(t)
	dir := hostsDir(t, up.Host, hostLine(m.Host))
	p := registry.New(registry.WithEndpoints(mirrors.New(mirrors.WithHostsDir(dir))))
	ref, err := name.ParseReference(up.Ref("team/missing", "v1"))
	testenv.Must(t, err, "ref")
	_, err = p.Manifest(context.Background(), ref)
	var we *registry.EndpointsError
	if !errors.As(err, &we) || len(we.Attempts) != 2 {
		t.Fatalf("err = %v, want an EndpointsError with 2 attempts", err)
	}
	ce := handlers.Classify(ref.Name(), err)
	if ce.Code != 404 || !strings.Contains(ce.Message, m.Host) || !strings.Contains(ce.Message, up.Host) {
		t.Fatalf("answer %d %q, want a 404 naming %s and %s", ce.Code, ce.Message, m.Host, up.Host)
	}

	up.Override(func(r *http.Request) bool { return testenv.Kind(r.URL.Path) == "manifest" },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(429)
		}))
	_, err = p.Manifest(context.Background(), ref)
	ce = handlers.Classify(ref.Name(), err)
	if ce.Code != 429 || ce.RetryAfter != "120" || !strings.Contains(ce.Message, m.Host) {
		t.Fatalf("answer %d Retry-After %q %q, want 429 with Retry-After 120 naming the mirror", ce.Code, ce.RetryAfter, ce.Message)
	}
}

// A tag is only resolved by hosts with "resolve"; a digest may come from
// a "pull"-only host, verified against the digest.
func TestMirrorCapabilities(t *testing.T) {
	up := testenv.StartRegistry(t)
	img := up.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	pull := testenv.StartRegistry(t)
	copyImage(t, pull, "team/app", "v1", img)
	dir := hostsDir(t, up.Host, hostLine(pull.Host, "pull"))
	p := registry.New(registry.WithEndpoints(mirrors.New(mirrors.WithHostsDir(dir))))
	tag, _ := name.ParseReference(up.Ref("team/app", "v1"))
	if _, err := p.Manifest(context.Background(), tag); err != nil {
		t.Fatal(err)
	}
	if n := manifestRequests(pull); n != 0 {
		t.Fatalf("pull-only host asked %d times for a tag", n)
	}
	up.ResetCounts()
	dig, _ := name.ParseReference(up.Ref("team/app", img.Digest))
	m, err := p.Manifest(context.Background(), dig)
	if err != nil || m.Digest.String() != img.Digest {
		t.Fatalf("by digest: %v", err)
	}
	if n, u := manifestRequests(pull), manifestRequests(up); n != 1 || u != 0 {
		t.Fatalf("by digest: pull-only host %d, upstream %d requests; want 1 and 0", n, u)
	}
}

// A caller that gives up stops the walk: the next endpoint is not asked.
func TestMirrorWalkStopsWithTheCaller(t *testing.T) {
	up, m := testenv.StartRegistry(t), testenv.StartRegistry(t)
	up.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	gate := m.Hold("/manifests/")
	dir := hostsDir(t, up.Host, hostLine(m.Host))
	p := registry.New(registry.WithEndpoints(mirrors.New(mirrors.WithHostsDir(dir))))
	ref, _ := name.ParseReference(up.Ref("team/app", "v1"))
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-gate.Arrived(); cancel() }()
	_, err := p.Manifest(ctx, ref)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := manifestRequests(up); n != 0 {
		t.Fatalf("upstream asked %d times after the caller gave up", n)
	}
}

// registries.conf blocked: 403, and no endpoint is contacted.
func TestBlockedMakesNoRequest(t *testing.T) {
	up, m := testenv.StartRegistry(t), testenv.StartRegistry(t)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	testenv.Must(t, os.WriteFile(conf, []byte("[[registry]]\nprefix = \""+up.Host+"/secret\"\nlocation = \""+up.Host+"/secret\"\nblocked = true\n"+
		"[[registry.mirror]]\nlocation = \""+m.Host+"\"\n"), 0o644), "write")
	p := registry.New(registry.WithEndpoints(mirrors.New(mirrors.WithRegistriesConf(conf))))
	ref, _ := name.ParseReference(up.Ref("secret/app", "v1"))
	_, err := p.Manifest(context.Background(), ref)
	ce := handlers.Classify(ref.Name(), err)
	if !errors.Is(err, registry.ErrDenied) || ce.Code != 403 || !strings.Contains(ce.Message, "blocked") {
		t.Fatalf("err = %v (%d %q), want a 403 saying blocked", err, ce.Code, ce.Message)
	}
	if len(up.Counts())+len(m.Counts()) != 0 {
		t.Fatalf("requests made: upstream %v, mirror %v", up.Counts(), m.Counts())
	}
}

// Air-gapped: the upstream is a counting listener that must see no
// connection; the mirror answers what it has, and a missing image is a
// fast 404 naming the mirror.
func TestMirrorsOnlyNeverContactsUpstream(t *testing.T) {
	upstream := testenv.ListenCounting(t, "127.0.0.1:0")
	src := testenv.StartRegistry(t)
	img := src.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	m := testenv.StartRegistry(t)
	copyImage(t, m, "team/app", "v1", img)
	dir := hostsDir(t, upstream.Addr(), hostLine(m.Host))
	p := registry.New(registry.WithEndpoints(mirrors.New(mirrors.WithHostsDir(dir), mirrors.WithMirrorsOnly(true))))
	ref, _ := name.ParseReference(upstream.Addr() + "/team/app:v1")
	got, err := p.Manifest(context.Background(), ref)
	if err != nil || got.Digest.String() != img.Digest {
		t.Fatalf("from the mirror: %v", err)
	}
	cfg, err := p.Blob(context.Background(), ref.Context(), configDigest(t, img.Manifest))
	if err != nil || string(cfg) != string(img.Config) {
		t.Fatalf("config from the mirror: %v", err)
	}
	missing, _ := name.ParseReference(upstream.Addr() + "/team/missing:v1")
	start := time.Now()
	_, err = p.Manifest(context.Background(), missing)
	took := time.Since(start)
	ce := handlers.Classify(missing.Name(), err)
	if ce.Code != 404 || !strings.Contains(ce.Message, m.Host) {
		t.Fatalf("missing image: %d %q, want a 404 naming the mirror", ce.Code, ce.Message)
	}
	if n := upstream.CountBefore(t); n != 0 {
		t.Fatalf("the upstream got %d connections", n)
	}
	t.Logf("missing image answered in %s", took)
}
