// Package helm holds the tests of regcap's Helm chart (deploy/helm/regcap):
// they render it with Helm's own Go packages, lint it as `helm lint`
// does, decode every object strictly into the Kubernetes API types, and
// check its wiring against the worker's --help. A module of its own, so
// that Helm and the Kubernetes API stay out of the worker's go.mod.
package helm
