package contract_test

import (
	"testing"

	"github.com/regcap/regcap/contract"
)

func TestSubjects(t *testing.T) {
	want := []string{"kubewarden.oci.v1.manifest_digest", "kubewarden.oci.v1.oci_manifest", "kubewarden.oci.v1.oci_manifest_config"}
	for i, fn := range contract.Functions() {
		if got := fn.Subject("kubewarden"); got != want[i] {
			t.Errorf("%s: subject %s, want %s", fn, got, want[i])
		}
	}
	if got := contract.OCIManifest.Subject("fleet-a"); got != "fleet-a.oci.v1.oci_manifest" {
		t.Errorf("custom prefix: %s", got)
	}
}
