package handlers

import (
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/contract"
)

func TestParsePlatform(t *testing.T) {
	cases := []struct {
		in   string
		want v1.Platform
		bad  bool
	}{
		{"linux/amd64", v1.Platform{OS: "linux", Architecture: "amd64"}, false},
		{"linux/arm64/v8", v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, false},
		{"linux", v1.Platform{}, true},
		{"linux/", v1.Platform{}, true},
		{"linux/arm/v7/x", v1.Platform{}, true},
		{"linux/am d64", v1.Platform{}, true},
		{"", v1.Platform{}, true},
	}
	for _, tc := range cases {
		got, err := ParsePlatform(tc.in)
		if tc.bad {
			var he *contract.Error
			if !errors.As(err, &he) || he.Code != 400 {
				t.Errorf("%q: want 400, got %v", tc.in, err)
			}
			continue
		}
		if err != nil || got.OS != tc.want.OS || got.Architecture != tc.want.Architecture || got.Variant != tc.want.Variant {
			t.Errorf("%q: got %+v, %v", tc.in, got, err)
		}
		if FormatPlatform(got) != tc.in {
			t.Errorf("%q does not round-trip: %s", tc.in, FormatPlatform(got))
		}
	}
}
