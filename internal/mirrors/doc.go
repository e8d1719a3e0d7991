// Package mirrors answers one question: for a logical registry and
// repository, asked by tag or by digest, which endpoints should be tried,
// in which order. It reads the configuration clusters already have:
// containerd's hosts.toml directories (docs/hosts.md in containerd) and
// containers/image's registries.conf v2 with its registries.conf.d
// drop-ins. Files are re-read when they change.
//
// It makes no network request; internal/registry walks the endpoints.
package mirrors
