package handlers

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/contract"
)

func TestParseReference(t *testing.T) {
	const dig = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	cases := []struct {
		name    string
		payload string
		want    string // normalised name; "" for a 400
		errPart string
	}{
		{"short name", `"busybox"`, "index.docker.io/library/busybox:latest", ""},
		{"tag", `"busybox:1.36"`, "index.docker.io/library/busybox:1.36", ""},
		{"docker.io", `"docker.io/library/busybox:latest"`, "index.docker.io/library/busybox:latest", ""},
		{"digest", `"busybox@` + dig + `"`, "index.docker.io/library/busybox@" + dig, ""},
		{"tag at digest", `"busybox:1.36@` + dig + `"`, "index.docker.io/library/busybox@" + dig, ""},
		{"private registry", `"ghcr.io/kubewarden/policy-server:v1.0"`, "ghcr.io/kubewarden/policy-server:v1.0", ""},
		{"loopback with port", `"127.0.0.1:5000/a/b:c"`, "127.0.0.1:5000/a/b:c", ""},
		{"escaped JSON", `"busybox\u003alatest"`, "index.docker.io/library/busybox:latest", ""},
		{"surrounding space", " \"busybox\"\n", "index.docker.io/library/busybox:latest", ""},
		{"zero bytes", ``, "", "empty payload"},
		{"empty string", `""`, "", "empty image reference"},
		{"not JSON", `busybox`, "", "not a JSON string"},
		{"number", `42`, "", "not a JSON string"},
		{"object", `{"image":"busybox"}`, "", "not a JSON string"},
		{"array", `["busybox"]`, "", "not a JSON string"},
		{"null", `null`, "", "not a JSON string"},
		{"unterminated", `"busybox`, "", "not a JSON string"},
		{"two strings", `"a" "b"`, "", "not a JSON string"},
		{"upper case", `"BusyBox"`, "", "invalid image reference"},
		{"space inside", `"busy box"`, "", "invalid image reference"},
		{"bad digest", `"busybox@sha256:abc"`, "", "invalid image reference"},
		{"long once normalised", `"` + strings.Repeat("a", 250) + `"`, "", "is over 255 characters"},
		{"long repository", `"ghcr.io/` + strings.Repeat("a", 256) + `"`, "", "invalid image reference"},
		{"sha512 digest", `"busybox@sha512:` + strings.Repeat("ab", 64) + `"`, "", "only sha256 digests are accepted"},
		{"newline", `"busybox\nrm -rf"`, "", "invalid image reference"},
		{"too large", `"` + strings.Repeat("a", contract.MaxPayload) + `"`, "", "over the 4096-byte limit"},
		{"upper-case host", `"LOCALHOST:5000/a:v1"`, "localhost:5000/a:v1", ""},
		{"Docker Hub's API host", `"registry-1.docker.io/busybox:1"`, "index.docker.io/library/busybox:1", ""},
		{"Docker Hub's API host, digest", `"Registry-1.Docker.io/library/busybox@` + dig + `"`, "index.docker.io/library/busybox@" + dig, ""},
		{"upper case repository", `"BusyBox"`, "", `repository path component "BusyBox"`},
		{"space in the repository", `"busy box"`, "", `repository path component "busy box"`},
		{"bad tag characters", `"busybox:v1!"`, "", `tag "v1!"`},
		{"short digest", `"busybox@sha256:abc"`, "", `digest "sha256:abc"`},
		{"bad host", `"my_registry.example.com/app:v1"`, "", `registry host "my_registry.example.com"`},
		{"upper-case Docker Hub", `"DOCKER.IO/library/busybox"`, "index.docker.io/library/busybox:latest", ""},
		{"double underscore", `"localhost:5000/a__b:v1"`, "localhost:5000/a__b:v1", ""},
		{"dashes", `"localhost:5000/a--b:v1"`, "localhost:5000/a--b:v1", ""},
		{"IPv6 loopback", `"[::1]:5000/a:v1"`, "[::1]:5000/a:v1", ""},
		{"dot-dot component", `"localhost:5000/a/../b:v1"`, "", `repository path component ".."`},
		{"dot component", `"localhost:5000/./b:v1"`, "", `repository path component "."`},
		{"empty component", `"localhost:5000/a//b:v1"`, "", `repository path component ""`},
		{"trailing slash", `"localhost:5000/a/:v1"`, "", `repository path component ""`},
		{"leading dash", `"localhost:5000/-a:v1"`, "", `repository path component "-a"`},
		{"trailing dash", `"localhost:5000/a-:v1"`, "", `repository path component "a-"`},
		{"leading underscore", `"localhost:5000/_a:v1"`, "", `repository path component "_a"`},
		{"triple underscore", `"localhost:5000/a___b:v1"`, "", `repository path component "a___b"`},
		{"two dots", `"localhost:5000/a..b:v1"`, "", `repository path component "a..b"`},
		{"tag starting with a dot", `"localhost:5000/a:.v1"`, "", `tag ".v1"`},
		{"tag starting with a dash", `"localhost:5000/a:-v1"`, "", `tag "-v1"`},
		{"port 0", `"localhost:0/a:v1"`, "", `registry port "0"`},
		{"port over 65535", `"127.0.0.1:65536/a:v1"`, "", `registry port "65536"`},
		{"port 99999", `"localhost:99999/a:v1"`, "", `registry port "99999"`},
		{"empty port", `"localhost:/a:v1"`, "", `registry port ""`},
		{"port with a leading zero", `"localhost:05000/a:v1"`, "", `registry port "05000"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref, err := ParseReference([]byte(tc.payload))
			if tc.want != "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if ref.Name() != tc.want {
					t.Fatalf("got %s, want %s", ref.Name(), tc.want)
				}
				return
			}
			var he *contract.Error
			if !errors.As(err, &he) || he.Code != 400 {
				t.Fatalf("want a 400 *Error, got %v", err)
			}
			if !strings.Contains(he.Message, tc.errPart) {
				t.Fatalf("message %q lacks %q", he.Message, tc.errPart)
			}
			if strings.ContainsAny(he.Message, "\r\n") || len(he.Message) > 300 {
				t.Fatalf("message not one bounded line: %q", he.Message)
			}
		})
	}
}

// A repository path of exactly 255 characters, counted after Docker
// Hub's implicit "library/" where that applies, is accepted; one more
// character is a 400 whose one bounded line names the limit, whichever
// step finds it too long (the parser, which counts "library/" only for
// digest references, or the check of the normalised form).
func TestParseReferenceRepositoryLimit(t *testing.T) {
	const dig = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	a := func(n int) string { return strings.Repeat("a", n) }
	cases := []struct {
		name  string
		image string
		repo  string // the normalised repository; "" for a 400
	}{
		{"host, 255", "ghcr.io/" + a(255), a(255)},
		{"host, 256", "ghcr.io/" + a(256), ""},
		{"host, two components, 255", "ghcr.io/team/" + a(250), "team/" + a(250)},
		{"host, two components, 256", "ghcr.io/team/" + a(251), ""},
		{"host, tag, 255", "localhost:5000/" + a(255) + ":v1", a(255)},
		{"host, tag, 256", "localhost:5000/" + a(256) + ":v1", ""},
		{"host, digest, 255", "ghcr.io/" + a(255) + "@" + dig, a(255)},
		{"host, digest, 256", "ghcr.io/" + a(256) + "@" + dig, ""},
		{"Docker Hub short name, 255 with library/", a(247), "library/" + a(247)},
		{"Docker Hub short name, 256 with library/", a(248), ""},
		{"docker.io, 255 with library/", "docker.io/" + a(247) + ":v1", "library/" + a(247)},
		{"docker.io, 256 with library/", "docker.io/" + a(248) + ":v1", ""},
		{"docker.io/library/, 255", "docker.io/library/" + a(247), "library/" + a(247)},
		{"docker.io/library/, 256", "docker.io/library/" + a(248), ""},
		{"Docker Hub namespace, 255", "docker.io/team/" + a(250), "team/" + a(250)},
		{"Docker Hub namespace, 256", "docker.io/team/" + a(251), ""},
		{"Docker Hub short name, digest, 255 with library/", a(247) + "@" + dig, "library/" + a(247)},
		{"Docker Hub short name, digest, 256 with library/", a(248) + "@" + dig, ""},
		{"docker.io, digest, 256 with library/", "docker.io/" + a(248) + "@" + dig, ""},
		{"Docker Hub in capitals, digest, 255 with library/", "INDEX.docker.io/" + a(247) + "@" + dig, "library/" + a(247)},
		{"Docker Hub in capitals, digest, 256 with library/", "INDEX.docker.io/" + a(248) + "@" + dig, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref, err := ParseReference([]byte(`"` + tc.image + `"`))
			if tc.repo != "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got := ref.Context().RepositoryStr(); got != tc.repo || len(got) != 255 {
					t.Fatalf("repository %q (%d characters), want %q", got, len(got), tc.repo)
				}
				return
			}
			var he *contract.Error
			if !errors.As(err, &he) || he.Code != 400 {
				t.Fatalf("want a 400 *contract.Error, got %v", err)
			}
			if !strings.Contains(he.Message, "is over 255 characters") {
				t.Fatalf("message %q does not name the limit", he.Message)
			}
			if strings.ContainsAny(he.Message, "\r\n") || len(he.Message) > 300 {
				t.Fatalf("message not one bounded line: %q", he.Message)
			}
		})
	}
}

// FuzzParseReference checks that no payload crashes the decoder, that
// every failure is a one-line 400, and that every success has a key that
// re-parses to itself.
func FuzzParseReference(f *testing.F) {
	for _, s := range []string{
		`"busybox"`, `"busybox:latest"`, `"ghcr.io/a/b:c"`, `"127.0.0.1:5000/x@sha256:0123456789012345678901234567890123456789012345678901234567890123"`,
		`"a:b@sha256:0123456789012345678901234567890123456789012345678901234567890123"`,
		``, `""`, `"`, `42`, `null`, `{}`, `[]`, `"\u0000"`, `"\ud800"`, `"a" "b"`, `"A"`, "\"\xff\"", `"localhost:99999/x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		ref, err := ParseReference(payload)
		if err != nil {
			var he *contract.Error
			if !errors.As(err, &he) || he.Code != 400 {
				t.Fatalf("non-400 failure for %q: %v", payload, err)
			}
			if strings.ContainsAny(he.Message, "\r\n") {
				t.Fatalf("multi-line message for %q: %q", payload, he.Message)
			}
			return
		}
		again, err := name.ParseReference(ref.Name())
		if err != nil || again.Name() != ref.Name() {
			t.Fatalf("normalised name %q does not re-parse to itself: %v", ref.Name(), err)
		}
		// What is accepted holds to the distribution grammar, with a
		// lower-case registry host.
		if h := ref.Context().RegistryStr(); h != strings.ToLower(h) {
			t.Fatalf("registry %q is not lower-case", h)
		}
		for _, c := range strings.Split(ref.Context().RepositoryStr(), "/") {
			if !pathComponent.MatchString(c) {
				t.Fatalf("accepted path component %q of %q", c, payload)
			}
		}
	})
}
