package mirrors

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestRegistriesConfEndpoints(t *testing.T) {
	const digest = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	const conf = `
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "mirror-a.internal:5000"
insecure = true
[[registry.mirror]]
location = "digest-cache.internal"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tag-cache.internal"
pull-from-mirror = "tag-only"

[[registry]]
prefix = "docker.io/library/blocked"
location = "docker.io/library/blocked"
blocked = true

[[registry]]
prefix = "example.com/foo"
location = "internal.example/bar"

[[registry]]
prefix = "example.com/foo/special"
location = "special.example/x/y"

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "corp-mirror.internal/ns"

[[registry]]
location = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "quay-mirror.internal"
`
	tests := []struct {
		name string
		req  Request
		want []string
		err  error
	}{
		{"mirrors in order then the primary, tag", Request{Registry: "docker.io", Repository: "library/busybox", Tag: "1"},
			[]string{"https://mirror-a.internal:5000/v2 library/busybox", "https://tag-cache.internal/v2 library/busybox", "https://registry-1.docker.io/v2 library/busybox"}, nil},
		{"digest-only mirror for a digest", Request{Registry: "index.docker.io", Repository: "library/busybox", Digest: digest},
			[]string{"https://mirror-a.internal:5000/v2 library/busybox", "https://digest-cache.internal/v2 library/busybox", "https://registry-1.docker.io/v2 library/busybox"}, nil},
		{"blocked by a longer prefix", Request{Registry: "docker.io", Repository: "library/blocked", Tag: "1"}, nil, ErrBlocked},
		{"prefix at a path boundary only", Request{Registry: "docker.io", Repository: "library/blockedx", Tag: "1"},
			[]string{"https://mirror-a.internal:5000/v2 library/blockedx", "https://tag-cache.internal/v2 library/blockedx", "https://registry-1.docker.io/v2 library/blockedx"}, nil},
		{"location rewriting", Request{Registry: "example.com", Repository: "foo/app", Tag: "1"},
			[]string{"https://internal.example/v2 bar/app"}, nil},
		{"longest prefix wins", Request{Registry: "example.com", Repository: "foo/special/app", Tag: "1"},
			[]string{"https://special.example/v2 x/y/app"}, nil},
		{"no match: the registry itself", Request{Registry: "example.com", Repository: "foobar/app", Tag: "1"},
			[]string{"https://example.com/v2 foobar/app"}, nil},
		{"wildcard prefix, no rewriting of the primary", Request{Registry: "a.b.corp.example", Repository: "team/app", Tag: "1"},
			[]string{"https://corp-mirror.internal/v2 ns/team/app", "https://a.b.corp.example/v2 team/app"}, nil},
		{"wildcard does not match the bare domain", Request{Registry: "corp.example", Repository: "team/app", Tag: "1"},
			[]string{"https://corp.example/v2 team/app"}, nil},
		{"mirror-by-digest-only skips mirrors for a tag", Request{Registry: "quay.io", Repository: "a/b", Tag: "1"},
			[]string{"https://quay.io/v2 a/b"}, nil},
		{"mirror-by-digest-only uses mirrors for a digest", Request{Registry: "quay.io", Repository: "a/b", Digest: digest},
			[]string{"https://quay-mirror.internal/v2 a/b", "https://quay.io/v2 a/b"}, nil},
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "registries.conf")
	write(t, path, conf)
	r := New(WithRegistriesConf(path))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Endpoints(tt.req)
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
	eps, _ := r.Endpoints(Request{Registry: "docker.io", Repository: "library/busybox", Tag: "1"})
	if !eps[0].Insecure || eps[1].Insecure || !eps[0].Mirror || eps[2].Mirror {
		t.Fatalf("insecure/mirror flags: %+v", eps)
	}
}

func TestRegistriesConfDropIns(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registries.conf")
	write(t, path, `
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "from-main"
[[registry]]
location = "quay.io"
[[registry.mirror]]
location = "quay-main"
`)
	// Loaded in lexical order; a later file's [[registry]] with the same
	// prefix replaces the earlier one; other files are ignored.
	write(t, filepath.Join(dir, "registries.conf.d/20-b.conf"), `
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "from-20"
`)
	write(t, filepath.Join(dir, "registries.conf.d/10-a.conf"), `
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "from-10"
`)
	write(t, filepath.Join(dir, "registries.conf.d/99-ignored.conf.bak"), `[[registry]]
location = "ghcr.io"
blocked = true`)
	r := New(WithRegistriesConf(path))
	got, err := r.Endpoints(Request{Registry: "ghcr.io", Repository: "a", Tag: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"https://from-20/v2 a", "https://ghcr.io/v2 a"}; !reflect.DeepEqual(urls(got), want) {
		t.Fatalf("got %q want %q", urls(got), want)
	}
	got, _ = r.Endpoints(Request{Registry: "quay.io", Repository: "a", Tag: "1"})
	if want := []string{"https://quay-main/v2 a", "https://quay.io/v2 a"}; !reflect.DeepEqual(urls(got), want) {
		t.Fatalf("got %q want %q", urls(got), want)
	}
}

func TestRegistriesConfRefused(t *testing.T) {
	for name, conf := range map[string]string{
		"v1 format":                     "[registries.search]\nregistries = ['docker.io']\n",
		"scheme in location":            "[[registry]]\nlocation = \"https://ghcr.io\"\n",
		"no prefix nor location":        "[[registry]]\ninsecure = true\n",
		"prefix without location":       "[[registry]]\nprefix = \"ghcr.io\"\n",
		"wildcard in the middle":        "[[registry]]\nprefix = \"a.*.com\"\nlocation = \"x\"\n",
		"wildcard with a path":          "[[registry]]\nprefix = \"*.a.com/foo\"\n",
		"pull-from-mirror on a primary": "[[registry]]\nlocation = \"a\"\npull-from-mirror = \"all\"\n",
		"bad pull-from-mirror":          "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n",
		"mirror without location":       "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\ninsecure = true\n",
		"both digest-only settings":     "[[registry]]\nlocation = \"a\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"all\"\n",
		"not TOML":                      "[[registry",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "registries.conf")
			write(t, path, conf)
			r := New(WithRegistriesConf(path))
			if err := r.Check(); !errors.Is(err, ErrConfig) {
				t.Fatalf("Check: %v, want ErrConfig", err)
			}
			if _, err := r.Endpoints(Request{Registry: "a", Repository: "b", Tag: "1"}); !errors.Is(err, ErrConfig) {
				t.Fatalf("Endpoints: %v, want ErrConfig", err)
			}
		})
	}
}

func TestRegistriesConfReloadsOnChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registries.conf")
	write(t, path, "[[registry]]\nlocation = \"ghcr.io\"\n")
	now := time.Unix(1000, 0)
	r := New(WithRegistriesConf(path), WithCheckInterval(time.Second), WithClock(func() time.Time { return now }))
	q := Request{Registry: "ghcr.io", Repository: "a", Tag: "1"}
	if _, err := r.Endpoints(q); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "registries.conf.d/block.conf"), "[[registry]]\nlocation = \"ghcr.io\"\nblocked = true\n")
	now = now.Add(time.Second)
	if _, err := r.Endpoints(q); !errors.Is(err, ErrBlocked) {
		t.Fatalf("a new drop-in was not read: %v", err)
	}
}

func TestHostsTomlAndRegistriesConfTogether(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "certs.d/docker.io/hosts.toml"), "[host.\"https://containerd-mirror\"]\n")
	write(t, filepath.Join(dir, "certs.d/ghcr.io/hosts.toml"), "[host.\"https://ghcr-mirror\"]\n")
	path := filepath.Join(dir, "registries.conf")
	write(t, path, "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"crio-mirror\"\n")
	r := New(WithRegistriesConf(path), WithHostsDir(filepath.Join(dir, "certs.d")))
	// registries.conf decides for the registries it names…
	got, _ := r.Endpoints(Request{Registry: "docker.io", Repository: "library/a", Tag: "1"})
	if want := []string{"https://crio-mirror/v2 library/a", "https://registry-1.docker.io/v2 library/a"}; !reflect.DeepEqual(urls(got), want) {
		t.Fatalf("got %q want %q", urls(got), want)
	}
	// …and hosts.toml for the others.
	got, _ = r.Endpoints(Request{Registry: "ghcr.io", Repository: "a", Tag: "1"})
	if want := []string{"https://ghcr-mirror/v2 a ns=ghcr.io", "https://ghcr.io/v2 a"}; !reflect.DeepEqual(urls(got), want) {
		t.Fatalf("got %q want %q", urls(got), want)
	}
}
