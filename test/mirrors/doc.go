// Package mirrors tests whole workers configured with mirrors
// (--hosts-dir, --registries-conf, --mirrors-only) against real
// registries on loopback: CNCF distribution as a pull-through cache,
// go-containerregistry's registry, and counting listeners standing in
// for registries that must not be contacted.
package mirrors
