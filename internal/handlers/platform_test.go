package handlers

import (
	"errors"
	"runtime"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/contract"
)

// Regcap-Platform follows the OCI platform grammar: two or three parts,
// each of [a-z0-9_.-]+, at most 64 bytes in all. Anything else is a 400
// whose one bounded line quotes the input and says what is wrong.
func TestParsePlatform(t *testing.T) {
	at := func(n int) string { return "linux/" + strings.Repeat("a", n-len("linux/")) } // n bytes
	cases := []struct {
		in      string
		want    v1.Platform
		errPart string // "" when in is valid
	}{
		{"linux/amd64", v1.Platform{OS: "linux", Architecture: "amd64"}, ""},
		{"linux/arm64/v8", v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, ""},
		{"linux/arm/v7", v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, ""},
		{"windows/amd64", v1.Platform{OS: "windows", Architecture: "amd64"}, ""},
		{"linux/ppc64le", v1.Platform{OS: "linux", Architecture: "ppc64le"}, ""},
		{"linux/s390x", v1.Platform{OS: "linux", Architecture: "s390x"}, ""},
		{"linux/riscv64", v1.Platform{OS: "linux", Architecture: "riscv64"}, ""},
		{"linux/386", v1.Platform{OS: "linux", Architecture: "386"}, ""},
		{"a_b/c.d/e-f", v1.Platform{OS: "a_b", Architecture: "c.d", Variant: "e-f"}, ""},
		{at(64), v1.Platform{OS: "linux", Architecture: strings.Repeat("a", 58)}, ""},
		{at(65), v1.Platform{}, `65 bytes, over the 64-byte limit`},
		{at(65)[:63] + "/v8", v1.Platform{}, `66 bytes, over the 64-byte limit`},
		{"", v1.Platform{}, `no "/" in it, expected os/arch[/variant]`},
		{"linux", v1.Platform{}, `no "/" in it`},
		{"linux/arm/v7/x", v1.Platform{}, `4 parts, expected os/arch[/variant]`},
		{"a/b/c/d", v1.Platform{}, `4 parts`},
		{"linux/", v1.Platform{}, `the architecture is empty`},
		{"/amd64", v1.Platform{}, `the os is empty`},
		{"/", v1.Platform{}, `the os is empty`},
		{"linux//v8", v1.Platform{}, `the architecture is empty`},
		{"linux/arm64/", v1.Platform{}, `the variant is empty`},
		{"linux/am d64", v1.Platform{}, `architecture "am d64" must match [a-z0-9_.-]+`},
		{"LINUX/amd64", v1.Platform{}, `os "LINUX" must match`},
		{"linux/AMD64", v1.Platform{}, `architecture "AMD64" must match`},
		{"linux/arm64/V8", v1.Platform{}, `variant "V8" must match`},
		{"linux/amd64:x", v1.Platform{}, `architecture "amd64:x" must match`},
		{"linux/amd64\n", v1.Platform{}, `architecture "amd64\n" must match`},
		{"linux/\tamd64", v1.Platform{}, `must match`},
		{"linux/amd64\x00", v1.Platform{}, `must match`},
		{"linux/ämd64", v1.Platform{}, `must match`},
		{"linux/amd64+x", v1.Platform{}, `must match`},
		{"linux/*", v1.Platform{}, `must match`},
		{"\xff/amd64", v1.Platform{}, `must match`},
	}
	for _, tc := range cases {
		got, err := ParsePlatform(tc.in)
		if tc.errPart != "" {
			var he *contract.Error
			if !errors.As(err, &he) || he.Code != 400 {
				t.Errorf("%q: want a 400 *contract.Error, got %+v, %v", tc.in, got, err)
				continue
			}
			if !strings.Contains(he.Message, tc.errPart) || !strings.HasPrefix(he.Message, "invalid platform "+quote(tc.in)) {
				t.Errorf("%q: message %q lacks the quoted input or %q", tc.in, he.Message, tc.errPart)
			}
			if strings.ContainsAny(he.Message, "\r\n") || len(he.Message) > contract.MaxMessage {
				t.Errorf("%q: message not one bounded line: %q", tc.in, he.Message)
			}
			continue
		}
		if err != nil || got.OS != tc.want.OS || got.Architecture != tc.want.Architecture || got.Variant != tc.want.Variant {
			t.Errorf("%q: got %+v, %v, want %+v", tc.in, got, err, tc.want)
		}
		if FormatPlatform(got) != tc.in {
			t.Errorf("%q does not round-trip: %s", tc.in, FormatPlatform(got))
		}
	}
}

// Every GOOS and GOARCH value Go knows (go/build's list, internal/syslist
// as of Go 1.26) is a valid os and architecture, and so is the platform
// the worker runs on.
func TestParsePlatformGoValues(t *testing.T) {
	goos := []string{"aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux",
		"nacl", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows", "zos"}
	goarch := []string{"386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "loong64", "mips", "mipsle",
		"mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "ppc64", "ppc64le", "riscv", "riscv64", "s390",
		"s390x", "sparc", "sparc64", "wasm"}
	var all []string
	for _, os := range append(goos, runtime.GOOS) {
		all = append(all, os+"/amd64", os+"/arm64/v8")
	}
	for _, arch := range append(goarch, runtime.GOARCH) {
		all = append(all, "linux/"+arch, "windows/"+arch+"/v7")
	}
	all = append(all, FormatPlatform(DefaultPlatform()))
	for _, s := range all {
		p, err := ParsePlatform(s)
		if err != nil || FormatPlatform(p) != s {
			t.Errorf("%s: %+v, %v", s, p, err)
		}
	}
}

// A huge Regcap-Platform header is refused as over the limit, at a cost
// that does not grow with its size: nothing proportional to it is
// allocated, whatever it holds.
func TestParsePlatformHugeRefusedCheaply(t *testing.T) {
	const mb = 1 << 20
	for _, huge := range []string{
		"linux/" + strings.Repeat("a", mb), // valid characters
		strings.Repeat("a/", mb/2),         // a million parts
		strings.Repeat("\xff", mb),         // not even UTF-8
	} {
		_, err := ParsePlatform(huge)
		var he *contract.Error
		if !errors.As(err, &he) || he.Code != 400 || !strings.Contains(he.Message, "over the 64-byte limit") || len(he.Message) > contract.MaxMessage {
			t.Errorf("%d-byte platform: %v, want a bounded 400 naming the limit", len(huge), err)
			continue
		}
		const runs = 100
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			_, _ = ParsePlatform(huge)
		}
		runtime.ReadMemStats(&after)
		if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 1<<10 {
			t.Errorf("refusing a %d-byte platform allocated %d bytes per call, want at most 1 KiB", len(huge), per)
		}
	}
}

// FuzzParsePlatform checks that no input crashes ParsePlatform, that every
// failure is a 400 on one line that fits an error reply (the input is
// quoted at most twice, 64 bytes each, escaped), and that every success is
// within the limit, two or three parts of [a-z0-9_.-]+, and formats back
// to the input.
func FuzzParsePlatform(f *testing.F) {
	for _, s := range []string{
		"linux/amd64", "linux/arm64/v8", "windows/amd64", "", "/", "//", "linux", "linux/", "a/b/c/d",
		"LINUX/amd64", "linux/amd64\n", "linux/am:d64", "\xff/x", "linux//v8",
		"linux/" + strings.Repeat("a", 58), "linux/" + strings.Repeat("a", 59),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePlatform(s)
		if err != nil {
			var he *contract.Error
			if !errors.As(err, &he) || he.Code != 400 {
				t.Fatalf("non-400 failure for %q: %v", s, err)
			}
			if strings.ContainsAny(he.Message, "\r\n") || len(he.Message) > contract.MaxMessage {
				t.Fatalf("message not one bounded line for %q: %q", s, he.Message)
			}
			return
		}
		if len(s) > contract.MaxPlatform {
			t.Fatalf("accepted %d bytes, over the %d-byte limit", len(s), contract.MaxPlatform)
		}
		parts := strings.Split(s, "/")
		if len(parts) < 2 || len(parts) > 3 {
			t.Fatalf("accepted %q: %d parts", s, len(parts))
		}
		for _, part := range parts {
			if part == "" || strings.Trim(part, "abcdefghijklmnopqrstuvwxyz0123456789_.-") != "" {
				t.Fatalf("accepted part %q of %q", part, s)
			}
		}
		if FormatPlatform(p) != s {
			t.Fatalf("%q formats back as %q", s, FormatPlatform(p))
		}
	})
}
