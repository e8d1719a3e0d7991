//go:build race

package e2e

// raceEnabled: the race detector is on. sync.Pool then drops some of
// what is put back, so pooled objects are allocated again now and then.
const raceEnabled = true
