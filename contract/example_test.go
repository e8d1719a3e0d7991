package contract_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/regcap/regcap/contract"
)

// The subjects a fleet serves, one per capability.
func ExampleFunctions() {
	for _, fn := range contract.Functions() {
		fmt.Println(fn, "→", fn.Subject(contract.DefaultSubjectPrefix))
	}
	// Output:
	// v1/manifest_digest → kubewarden.oci.v1.manifest_digest
	// v1/oci_manifest → kubewarden.oci.v1.oci_manifest
	// v1/oci_manifest_config → kubewarden.oci.v1.oci_manifest_config
}

// An error answer as a front sends it: the code and one bounded line,
// and its JSON form (the HTTP front's body). An error nothing classified
// is a 500 that says so.
func ExampleAsError() {
	err := fmt.Errorf("fetching: %w", &contract.Error{Code: 429, Message: "docker.io/library/busybox:latest: registry rate-limited us", RetryAfter: "30"})
	ce := contract.AsError(err)
	body, _ := json.Marshal(ce)
	fmt.Println(ce.Code, string(body))
	fmt.Println(contract.AsError(errors.New("nil map")).Code)
	// Output:
	// 429 {"code":429,"message":"docker.io/library/busybox:latest: registry rate-limited us","retry_after":"30"}
	// 500
}

// A registry's Retry-After, as seconds or a date, clamped: a date in the
// past is no wait, and nothing waits longer than MaxRetryAfter.
func ExampleParseRetryAfter() {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{"30", "Sun, 06 Dec 2026 12:01:00 GMT", "Sat, 05 Dec 2026 12:00:00 GMT", "99999999999999999999", "soon"} {
		d, ok := contract.ParseRetryAfter(v, now)
		fmt.Println(d, ok)
	}
	// Output:
	// 30s true
	// 1m0s true
	// 0s true
	// 1h0m0s true
	// 0s false
}
