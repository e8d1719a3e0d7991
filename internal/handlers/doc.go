// Package handlers provides the three kubewarden/oci host capabilities
// (v1/manifest_digest, v1/oci_manifest, v1/oci_manifest_config) over a
// Registry: the parsing of a request and of its image reference, the
// parsing of the manifests and indexes fetched, and Classify, the one
// place a fetch failure becomes a contract.Error.
package handlers
