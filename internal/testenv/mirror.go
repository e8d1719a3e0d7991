package testenv

import (
	"strconv"
	"testing"
)

// PullThroughCache is a CNCF distribution registry running as a
// pull-through cache (proxy.remoteurl) of another registry: what clusters
// run as a Docker Hub mirror.
type PullThroughCache struct {
	// Host is its host:port (plain HTTP on loopback).
	Host string
}

// StartPullThroughCache starts Debian's docker-registry as a pull-through
// cache of remoteURL (e.g. "http://127.0.0.1:5000"), on a free loopback
// port, until the test ends. It fetches from remoteURL what it is asked
// for and does not have, and keeps it.
func StartPullThroughCache(t testing.TB, remoteURL string) *PullThroughCache {
	t.Helper()
	d := StartDistribution(t, DistributionConfig{ProxyRemoteURL: remoteURL})
	return &PullThroughCache{Host: "127.0.0.1:" + strconv.Itoa(d.Port)}
}
