package mirrors

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// urls lists the endpoints as scheme://host/path?ns=… repo, for comparison.
func urls(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		s := e.URL() + " " + e.Repository
		if e.Namespace != "" {
			s += " ns=" + e.Namespace
		}
		out = append(out, s)
	}
	return out
}

func TestHostsTomlEndpoints(t *testing.T) {
	const digest = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	tests := []struct {
		name  string
		files map[string]string // relative to the hosts dir
		req   Request
		want  []string
		err   error
	}{
		{
			name: "nothing configured: the registry itself, Docker Hub at registry-1",
			req:  Request{Registry: "index.docker.io", Repository: "library/busybox", Tag: "1"},
			want: []string{"https://registry-1.docker.io/v2 library/busybox"},
		},
		{
			name: "hosts in file order, not map or alphabetical order, then server",
			files: map[string]string{"docker.io/hosts.toml": `
server = "https://registry-1.docker.io"
[host."https://zzz.mirror"]
  capabilities = ["pull", "resolve"]
[host."https://aaa.mirror"]
  capabilities = ["pull", "resolve"]
[host."https://mmm.mirror:5000"]
`},
			req: Request{Registry: "docker.io", Repository: "library/busybox", Tag: "1"},
			want: []string{
				"https://zzz.mirror/v2 library/busybox ns=docker.io",
				"https://aaa.mirror/v2 library/busybox ns=docker.io",
				"https://mmm.mirror:5000/v2 library/busybox ns=docker.io",
				"https://registry-1.docker.io/v2 library/busybox",
			},
		},
		{
			name: "a tag skips pull-only hosts",
			files: map[string]string{"ghcr.io/hosts.toml": `
[host."https://pullonly"]
  capabilities = ["pull"]
[host."https://resolver"]
  capabilities = ["pull", "resolve"]
`},
			req:  Request{Registry: "ghcr.io", Repository: "a/b", Tag: "v1"},
			want: []string{"https://resolver/v2 a/b ns=ghcr.io", "https://ghcr.io/v2 a/b"},
		},
		{
			name: "a digest may use pull-only hosts",
			files: map[string]string{"ghcr.io/hosts.toml": `
[host."https://pullonly"]
  capabilities = ["pull"]
[host."https://resolver"]
  capabilities = ["pull", "resolve"]
`},
			req:  Request{Registry: "ghcr.io", Repository: "a/b", Digest: digest},
			want: []string{"https://pullonly/v2 a/b ns=ghcr.io", "https://resolver/v2 a/b ns=ghcr.io", "https://ghcr.io/v2 a/b"},
		},
		{
			name: "host_port_ folder before host:port before _default",
			files: map[string]string{
				"reg.local_5000_/hosts.toml": `server = "https://first"`,
				"reg.local:5000/hosts.toml":  `server = "https://second"`,
				"_default/hosts.toml":        `server = "https://third"`,
			},
			req:  Request{Registry: "reg.local:5000", Repository: "x", Tag: "1"},
			want: []string{"https://first/v2 x ns=reg.local:5000"},
		},
		{
			name: "host:port folder when no host_port_",
			files: map[string]string{
				"reg.local:5000/hosts.toml": `server = "https://second"`,
				"_default/hosts.toml":       `server = "https://third"`,
			},
			req:  Request{Registry: "reg.local:5000", Repository: "x", Tag: "1"},
			want: []string{"https://second/v2 x ns=reg.local:5000"},
		},
		{
			name:  "_default for any registry without a folder",
			files: map[string]string{"_default/hosts.toml": "[host.\"http://cache:5000\"]\n"},
			req:   Request{Registry: "quay.io", Repository: "x/y", Tag: "1"},
			want:  []string{"http://cache:5000/v2 x/y ns=quay.io", "https://quay.io/v2 x/y"},
		},
		{
			name: "path, override_path, scheme-less host",
			files: map[string]string{"docker.io/hosts.toml": `
server = "https://registry-1.docker.io"
[host."https://harbor/v2/proxy-hub"]
  override_path = true
[host."mirror.example/base"]
`},
			req: Request{Registry: "docker.io", Repository: "library/nginx", Tag: "1"},
			want: []string{
				"https://harbor/v2/proxy-hub library/nginx ns=docker.io",
				"https://mirror.example/base/v2 library/nginx ns=docker.io",
				"https://registry-1.docker.io/v2 library/nginx",
			},
		},
		{
			name:  "server is the mirror: the upstream never appears (air-gapped)",
			files: map[string]string{"docker.io/hosts.toml": `server = "http://mirror.internal:5000"`},
			req:   Request{Registry: "docker.io", Repository: "library/busybox", Tag: "1"},
			want:  []string{"http://mirror.internal:5000/v2 library/busybox ns=docker.io"},
		},
		{
			name: "a tag and only pull hosts with server pull-only: no endpoint",
			files: map[string]string{"ghcr.io/hosts.toml": `
server = "https://m"
capabilities = ["pull"]
`},
			req: Request{Registry: "ghcr.io", Repository: "a", Tag: "1"},
			err: ErrNoEndpoint,
		},
		{
			name:  "malformed hosts.toml is a config error, never a silent direct pull",
			files: map[string]string{"ghcr.io/hosts.toml": `[host."https://m"`},
			req:   Request{Registry: "ghcr.io", Repository: "a", Tag: "1"},
			err:   ErrConfig,
		},
		{
			name:  "unknown capability",
			files: map[string]string{"ghcr.io/hosts.toml": "[host.\"https://m\"]\ncapabilities = [\"fly\"]\n"},
			req:   Request{Registry: "ghcr.io", Repository: "a", Tag: "1"},
			err:   ErrConfig,
		},
		{
			name:  "header with a line break",
			files: map[string]string{"ghcr.io/hosts.toml": "[host.\"https://m\".header]\nx-a = \"1\\r\\nEvil: 2\"\n"},
			req:   Request{Registry: "ghcr.io", Repository: "a", Tag: "1"},
			err:   ErrConfig,
		},
		{
			name:  "a scheme other than http(s)",
			files: map[string]string{"ghcr.io/hosts.toml": `server = "httpx://m"`},
			req:   Request{Registry: "ghcr.io", Repository: "a", Tag: "1"},
			err:   ErrConfig,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for p, b := range tt.files {
				write(t, filepath.Join(dir, p), b)
			}
			got, err := New(WithHostsDir(dir)).Endpoints(tt.req)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(urls(got), tt.want) {
				t.Fatalf("got\n%q\nwant\n%q", urls(got), tt.want)
			}
		})
	}
}

func TestHostsTomlPerHostSettings(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "reg.example/hosts.toml"), `
server = "https://reg.example"
[host."https://m1"]
  ca = "ca.pem"
  client = [["c.pem", "/abs/k.pem"], "both.pem"]
  skip_verify = true
  [host."https://m1".header]
    x-token = "a"
    x-multi = ["b", "c"]
[host."https://m2"]
  ca = ["/etc/ca1.pem", "ca2.pem"]
`)
	eps, err := New(WithHostsDir(dir)).Endpoints(Request{Registry: "reg.example", Repository: "r", Tag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 3 {
		t.Fatalf("%d endpoints: %q", len(eps), urls(eps))
	}
	base := filepath.Join(dir, "reg.example")
	m1 := eps[0]
	if !reflect.DeepEqual(m1.CAFiles, []string{filepath.Join(base, "ca.pem")}) ||
		!reflect.DeepEqual(m1.ClientCerts, [][2]string{{filepath.Join(base, "c.pem"), "/abs/k.pem"}, {filepath.Join(base, "both.pem"), ""}}) ||
		m1.SkipVerify == nil || !*m1.SkipVerify ||
		!reflect.DeepEqual(m1.Header, http.Header{"X-Token": {"a"}, "X-Multi": {"b", "c"}}) {
		t.Fatalf("m1 = %+v", m1)
	}
	if !reflect.DeepEqual(eps[1].CAFiles, []string{"/etc/ca1.pem", filepath.Join(base, "ca2.pem")}) || eps[1].Header != nil {
		t.Fatalf("m2 = %+v", eps[1])
	}
	if eps[2].Mirror || eps[2].Namespace != "" || !eps[0].Mirror {
		t.Fatalf("mirror flags: %+v", eps)
	}
	// Endpoints are copies: changing one does not change the next answer.
	eps[0].Header.Set("X-Token", "changed")
	again, _ := New(WithHostsDir(dir)).Endpoints(Request{Registry: "reg.example", Repository: "r", Tag: "t"})
	if again[0].Header.Get("X-Token") != "a" {
		t.Fatal("the cached header was changed through a returned endpoint")
	}
}

func TestCertsFolderWithoutHostsToml(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "reg.example/ca.crt"), "x")
	write(t, filepath.Join(dir, "reg.example/client.cert"), "x")
	write(t, filepath.Join(dir, "reg.example/client.key"), "x")
	eps, err := New(WithHostsDir(dir)).Endpoints(Request{Registry: "reg.example", Repository: "r", Tag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "reg.example")
	want := Endpoint{Scheme: "https", Host: "reg.example", Path: "/v2", Repository: "r", Source: base,
		CAFiles: []string{filepath.Join(base, "ca.crt")}, ClientCerts: [][2]string{{filepath.Join(base, "client.cert"), filepath.Join(base, "client.key")}}}
	if len(eps) != 1 || !reflect.DeepEqual(eps[0], want) {
		t.Fatalf("got %+v\nwant %+v", eps, want)
	}
}

func TestMirrorsOnly(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "docker.io/hosts.toml"), "[host.\"https://m\"]\n")
	r := New(WithHostsDir(dir), WithMirrorsOnly(true))
	eps, err := r.Endpoints(Request{Registry: "registry-1.docker.io", Repository: "library/a", Tag: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(urls(eps), []string{"https://m/v2 library/a ns=docker.io"}) {
		t.Fatalf("got %q", urls(eps))
	}
	_, err = r.Endpoints(Request{Registry: "ghcr.io", Repository: "a", Tag: "1"})
	var ne *NoEndpointError
	if !errors.As(err, &ne) {
		t.Fatalf("err = %v, want a NoEndpointError", err)
	}
}

func TestHostsTomlReloadsOnChange(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ghcr.io/hosts.toml")
	write(t, file, "[host.\"https://one\"]\n")
	now := time.Unix(1000, 0)
	var reported []string
	r := New(WithHostsDir(dir), WithCheckInterval(time.Second), WithClock(func() time.Time { return now }),
		WithErrorHandler(func(p string, err error) { reported = append(reported, p) }))
	q := Request{Registry: "ghcr.io", Repository: "a", Tag: "1"}
	first := func() string {
		t.Helper()
		eps, err := r.Endpoints(q)
		if err != nil {
			t.Fatal(err)
		}
		return eps[0].Host
	}
	if h := first(); h != "one" {
		t.Fatalf("first = %s", h)
	}
	write(t, file, "[host.\"https://two-longer\"]\n")
	if h := first(); h != "one" {
		t.Fatalf("re-read before the check interval: %s", h)
	}
	now = now.Add(time.Second)
	if h := first(); h != "two-longer" {
		t.Fatalf("not re-read after a change: %s", h)
	}
	// A broken edit keeps the last good version and is reported.
	write(t, file, "[host.\"https://three\"")
	now = now.Add(time.Second)
	if h := first(); h != "two-longer" {
		t.Fatalf("after a broken edit: %s", h)
	}
	if len(reported) != 1 || reported[0] != file {
		t.Fatalf("reported %q", reported)
	}
	// Removing the folder goes back to the registry itself.
	if err := os.RemoveAll(filepath.Join(dir, "ghcr.io")); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Second)
	if h := first(); h != "ghcr.io" {
		t.Fatalf("after removal: %s", h)
	}
}

// A file replaced by one of the same size and the same (coarse) mtime, as
// a ConfigMap update can be, is still seen as changed.
func TestHostsTomlReplacedWithSameSizeAndMtime(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ghcr.io/hosts.toml")
	write(t, file, "[host.\"https://one\"]\n")
	mtime := time.Unix(1700000000, 0)
	if err := os.Chtimes(file, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	r := New(WithHostsDir(dir), WithCheckInterval(0))
	q := Request{Registry: "ghcr.io", Repository: "a", Tag: "1"}
	if eps, _ := r.Endpoints(q); eps[0].Host != "one" {
		t.Fatalf("first = %s", eps[0].Host)
	}
	tmp := file + ".new"
	write(t, tmp, "[host.\"https://two\"]\n")
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	if eps, _ := r.Endpoints(q); eps[0].Host != "two" {
		t.Fatalf("after a same-size, same-mtime replacement: %s", eps[0].Host)
	}
}
