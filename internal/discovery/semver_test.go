package discovery_test

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/micro"

	"github.com/regcap/regcap/internal/discovery"
	"github.com/regcap/regcap/internal/testenv"
)

// TestSemVer: every version stamp a build can carry is announced as a
// version that nats.go/micro itself accepts. micro does not export its
// check, so each is given to micro.AddService, which refuses a service
// whose version is not a SemVer (the same regular expression `nats micro`
// validates answers with).
func TestSemVer(t *testing.T) {
	ns := testenv.StartNATS(t)
	nc := testenv.Connect(t, ns.ClientURL())
	microAccepts := func(version string) error {
		svc, err := micro.AddService(nc, micro.Config{Name: discovery.Name, Version: version})
		if err != nil {
			return err
		}
		return svc.Stop()
	}

	cases := []struct {
		stamp, want string
	}{
		// Unstamped: go run, go build, the Dockerfile's default.
		{"", "0.0.0-dev"},
		{"dev", "0.0.0-dev"},
		{"  dev\n", "0.0.0-dev"},
		// make build without a tag: git describe --always gives the hash.
		{"02d75a8", "0.0.0-dev+02d75a8"},
		{"02d75a8-dirty", "0.0.0-dev+02d75a8.dirty"},
		{"0123456", "0.0.0-dev+0123456"}, // all digits, leading zero: fine as build metadata, not as a pre-release
		{"02d75a8c1e9f4b3a2d1c0b9a8f7e6d5c4b3a2d1c", "0.0.0-dev+02d75a8c1e9f4b3a2d1c0b9a8f7e6d5c4b3a2d1c"},
		// make build on a tag.
		{"v1.2.3", "1.2.3"},
		{"V1.2.3", "1.2.3"},
		{"1.2.3", "1.2.3"},
		{"v1.2.3-dirty", "1.2.3+dirty"},
		{"v1.2.3-4-g02d75a8", "1.2.3+4.g02d75a8"},
		{"v1.2.3-4-g02d75a8-dirty", "1.2.3+4.g02d75a8.dirty"},
		{"v1.2.3-0-g02d75a8", "1.2.3+0.g02d75a8"}, // --long
		{"v0.10.0-rc.1", "0.10.0-rc.1"},
		{"v0.10.0-rc.1-12-gabcdef0-dirty", "0.10.0-rc.1+12.gabcdef0.dirty"},
		{"v1.2.3+build.7", "1.2.3+build.7"},
		{"1.2.3-beta-dirty", "1.2.3-beta+dirty"},
		// Already a SemVer: unchanged, so SemVer is its own image.
		{"0.0.0-dev+02d75a8.dirty", "0.0.0-dev+02d75a8.dirty"},
		{"1.2.3+4.g02d75a8.dirty", "1.2.3+4.g02d75a8.dirty"},
		// Anything else: sanitised into build metadata.
		{"v2", "0.0.0-dev+v2"},
		{"1.2", "0.0.0-dev+1.2"},
		{"v01.2.3", "0.0.0-dev+v01.2.3"},
		{"release/2024_06 #7", "0.0.0-dev+release.2024.06.7"},
		{"feature-x..y", "0.0.0-dev+feature-x.y"},
		{"v1.2.3_4", "0.0.0-dev+v1.2.3.4"},
		{"1.2.3-01", "0.0.0-dev+1.2.3-01"}, // a numeric pre-release with a leading zero is not a SemVer
		{"été", "0.0.0-dev+t"},
		{"+++", "0.0.0-dev"},
	}
	for _, tc := range cases {
		got := discovery.SemVer(tc.stamp)
		if got != tc.want {
			t.Errorf("SemVer(%q) = %q, want %q", tc.stamp, got, tc.want)
		}
		if err := microAccepts(got); err != nil {
			t.Errorf("SemVer(%q) = %q: micro.AddService refuses it: %v", tc.stamp, got, err)
		}
		if again := discovery.SemVer(got); again != got {
			t.Errorf("SemVer(%q) = %q, but SemVer(%q) = %q", tc.stamp, got, got, again)
		}
	}

	// The check is micro's own: the stamps of issue 18 are refused as they
	// are.
	for _, stamp := range []string{"dev", "02d75a8", "02d75a8-dirty", "v1.2.3", "v1.2.3-4-g02d75a8-dirty"} {
		if err := microAccepts(stamp); !errors.Is(err, micro.ErrConfigValidation) {
			t.Errorf("micro.AddService accepts version %q (%v): the test does not check what it claims", stamp, err)
		}
	}
}
