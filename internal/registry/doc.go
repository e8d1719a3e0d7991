// Package registry talks to OCI distribution registries: one reused,
// authenticated transport per repository, bounded reads, digest checks and
// errors that keep what the registry said (status, Retry-After) so that the
// caller can classify them.
package registry
