package handlers

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/contract"
)

func TestKeysShareAliases(t *testing.T) {
	key := func(fn contract.Function, s string, p v1.Platform) string {
		ref, err := name.ParseReference(s)
		if err != nil {
			t.Fatal(err)
		}
		return Request{Function: fn, Ref: ref, Platform: p}.Key()
	}
	amd := v1.Platform{OS: "linux", Architecture: "amd64"}
	want := "regcap:v2:manifest_digest:index.docker.io/library/busybox:latest"
	for _, alias := range []string{"busybox", "busybox:latest", "docker.io/library/busybox:latest", "index.docker.io/library/busybox", "docker.io/busybox"} {
		if got := key(contract.ManifestDigest, alias, v1.Platform{}); got != want {
			t.Errorf("%s: key %s, want %s", alias, got, want)
		}
	}
	if got, want := key(contract.OCIManifestConfig, "busybox", amd), "regcap:v2:oci_manifest_config:linux/amd64:index.docker.io/library/busybox:latest"; got != want {
		t.Errorf("config key %s, want %s", got, want)
	}
	if key(contract.OCIManifestConfig, "busybox", amd) == key(contract.OCIManifestConfig, "busybox", v1.Platform{OS: "linux", Architecture: "arm64"}) {
		t.Error("platforms share a config key")
	}
	if key(contract.ManifestDigest, "busybox", amd) == key(contract.OCIManifest, "busybox", amd) {
		t.Error("functions share a key")
	}
}
