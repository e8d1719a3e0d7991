package contract

// MaxPlatform is the longest Regcap-Platform header accepted, in bytes.
// The platform becomes part of the oci_manifest_config cache key, in
// Redis and in every worker's memory tier, so what a caller may put
// there is bounded; real platforms ("linux/arm64/v8", "windows/amd64")
// are far shorter.
const MaxPlatform = 64
