#!/usr/bin/env bash
# Installs the servers and clients regcap's tests run for real: redis-server
# (which also runs the sentinels), redis-cli, curl, the
# CNCF distribution registry (Debian package docker-registry) for the
# end-to-end tests, and the nats CLI (natscli, a Go module) for the
# service discovery test (test/discovery). Idempotent; needs root (or sudo)
# only when an apt package is missing.
set -euo pipefail

# The nats CLI, pinned: test/discovery reads NATSCLI_VERSION here and
# insists on it. Installed into the Go bin folder, where the test looks.
NATSCLI_VERSION=v0.5.0
GO=${GO:-go}
gobin=$($GO env GOBIN)
[ -n "$gobin" ] || gobin="$($GO env GOPATH)/bin"
if [ "$("$gobin/nats" --version 2>/dev/null)" != "$NATSCLI_VERSION" ]; then
	echo "installing the nats CLI: github.com/nats-io/natscli/nats@$NATSCLI_VERSION into $gobin" >&2
	$GO install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION"
fi

need=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
# redis-cli forms the Redis Cluster of the failover tests (test/ha).
command -v redis-cli >/dev/null 2>&1 || [ -x /usr/bin/redis-cli ] || need+=(redis-tools)
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v curl >/dev/null 2>&1 || need+=(curl)
# zsh and fish check the requester's completion scripts (zsh -n, fish -n).
command -v zsh >/dev/null 2>&1 || need+=(zsh)
command -v fish >/dev/null 2>&1 || need+=(fish)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing test dependencies: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
		echo "missing ${need[*]} and not root: install them with apt-get" >&2
		exit 1
	fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The package starts system services we do not want holding ports.
for svc in redis-server docker-registry; do
	$SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
