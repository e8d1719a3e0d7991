#!/usr/bin/env bash
# Installs the servers and clients regcap's tests run for real: redis-server
# (which also runs the sentinels), redis-cli, curl, and the
# CNCF distribution registry (Debian package docker-registry) for the
# end-to-end tests. Idempotent; needs root (or sudo) only when something is
# missing.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
# redis-cli forms the Redis Cluster of the failover tests (test/ha).
command -v redis-cli >/dev/null 2>&1 || [ -x /usr/bin/redis-cli ] || need+=(redis-tools)
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v curl >/dev/null 2>&1 || need+=(curl)
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
