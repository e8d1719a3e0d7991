#!/usr/bin/env bash
# Reproduces the figures of docs/performance.md:
# one worker with its embedded NATS server and a Redis, a CNCF distribution
# registry (Debian package docker-registry) seeded with small images, and
# `requester bench` on the warm path (c=1 and c=32, hit path vs NATS echo)
# and on the cold path (a new tag per request: a registry fetch each).
#
# Everything listens on 127.0.0.1 only. Everything started here is stopped
# on exit. Results (text tables and JSON) go to $OUT.
#
#   scripts/bench.sh                 # defaults below
#   RUNS=5 DURATION=5s scripts/bench.sh
#   PATHS=cold-digest LEVELS=32 scripts/bench.sh   # the cold path against its raw HEAD floor
#   WORKER_BIN=/path/to/other/worker scripts/bench.sh  # another build of the worker, same requester
#   CACHE=memory PATHS=cold-digest LEVELS=32 scripts/bench.sh  # the in-process cache only, no Redis
#   WORKER_ARGS="--memory-cache-size 0" PATHS=warm-digest scripts/bench.sh  # Redis hits
#   NO_FLOORS=1 scripts/bench.sh     # regcap alone (no echo, no relay): the CPU seconds per
#                                    # request in machine.txt are then the worker's and Redis's own
#   PERF_OUT=/tmp/worker.perf PATHS=cold-digest LEVELS=32 scripts/bench.sh  # perf record the worker
#                                    # (then: perf report -i /tmp/worker.perf --no-children)
set -euo pipefail

cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/regcap-bench}
RUNS=${RUNS:-5}             # each figure is the median of RUNS runs
DURATION=${DURATION:-5s}    # one warm measurement
WARMUP=${WARMUP:-1s}
COLD_REQUESTS=${COLD_REQUESTS:-1000} # requests per cold measurement
LEVELS=${LEVELS:-1,32}
IMAGES=${IMAGES:-8}
NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
REG_PORT=${REG_PORT:-15000}
REG=127.0.0.1:$REG_PORT
PATHS=${PATHS:-warm-digest warm-config cold-digest cold-config}
WORKER_BIN=${WORKER_BIN:-}
CACHE=${CACHE:-redis}       # redis: the worker shares a Redis; memory: its in-process cache only
PERF_OUT=${PERF_OUT:-}      # a file: perf record -g the worker while the bench runs
NO_FLOORS=${NO_FLOORS:-}    # set: --no-echo (no echo, no relay through the worker's NATS server)
WORKER_ARGS=${WORKER_ARGS:-} # more worker flags, e.g. "--memory-cache-size 0" for Redis hits
floors=()
if [ -n "$NO_FLOORS" ]; then floors=(--no-echo); fi
case $CACHE in redis | memory) ;; *) echo "CACHE=$CACHE: want redis or memory" >&2; exit 2 ;; esac

mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

echo "building worker and requester" >&2
CGO_ENABLED=0 go build -trimpath -o "$work/bin/" ./cmd/worker ./cmd/requester
worker=${WORKER_BIN:-$work/bin/worker}
requester=$work/bin/requester

wait_port() { # host:port
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing listens on $1" >&2
	return 1
}

echo "starting redis on 127.0.0.1:$REDIS_PORT" >&2
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
	--dir "$work" --protected-mode no >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=($redis_pid)
wait_port "127.0.0.1:$REDIS_PORT"

echo "starting docker-registry on $REG" >&2
mkdir -p "$work/registry"
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: $REG
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
pids+=($registry_pid)
wait_port "$REG"

# push_blob REPO FILE: monolithic upload, prints the digest.
push_blob() {
	local repo=$1 file=$2 d loc sep
	d=sha256:$(sha256sum <"$file" | cut -d' ' -f1)
	loc=$(curl -sSf -X POST -D - -o /dev/null "http://$REG/v2/$repo/blobs/uploads/" |
		tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
	case $loc in http*) ;; *) loc="http://$REG$loc" ;; esac
	sep='?'
	case $loc in *\?*) sep='&' ;; esac
	curl -sSf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
		--data-binary "@$file" "$loc${sep}digest=$d"
	echo "$d"
}

# seed REPO TAG: a small OCI image (config + one 4 KiB layer).
seed() {
	local repo=$1 tag=$2 cfg layer m
	printf '{"architecture":"amd64","os":"linux","config":{"Env":["IMAGE=%s"]},"rootfs":{"type":"layers","diff_ids":[]}}' \
		"$repo:$tag" >"$work/cfg.json"
	head -c 4096 /dev/urandom >"$work/layer"
	cfg=$(push_blob "$repo" "$work/cfg.json")
	layer=$(push_blob "$repo" "$work/layer")
	m='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
	m+='"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'$cfg'","size":'$(stat -c %s "$work/cfg.json")'},'
	m+='"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"'$layer'","size":4096}]}'
	curl -sSf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
		--data-binary "$m" "http://$REG/v2/$repo/manifests/$tag"
}

echo "seeding $IMAGES images" >&2
: >"$OUT/images.txt"
for i in $(seq 0 $((IMAGES - 1))); do
	seed "bench/app$i" v1
	echo "$REG/bench/app$i:v1" >>"$OUT/images.txt"
done

echo "starting the worker (embedded NATS on 127.0.0.1:$NATS_PORT, cache: $CACHE)" >&2
redis_flags=()
if [ "$CACHE" = redis ]; then redis_flags=(--redis-url "redis://127.0.0.1:$REDIS_PORT"); fi
# A TTL longer than the whole run, so that the warm figures are all hits
# (the cache column of the tables shows it).
# shellcheck disable=SC2086 # WORKER_ARGS is a list of flags
"$worker" --embedded-nats-addr "127.0.0.1:$NATS_PORT" "${redis_flags[@]}" \
	--metrics-addr "" --cache-ttl 30m --log-level warn $WORKER_ARGS >"$work/worker.log" 2>&1 &
worker_pid=$!
pids+=($worker_pid)
wait_port "127.0.0.1:$NATS_PORT"
if [ -n "$PERF_OUT" ]; then
	perf record -F 499 -g -o "$PERF_OUT" -p "$worker_pid" >"$work/perf.log" 2>&1 &
	perf_pid=$!
fi
export NATS_URL=nats://127.0.0.1:$NATS_PORT

{
	echo "# $(date -u +%FT%TZ), $(nproc) cores, $(git describe --always --dirty 2>/dev/null || echo unknown)"
	echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# cache: $CACHE"
} >"$OUT/machine.txt"

cpu() { # PID: user+system CPU seconds so far
	awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$1/stat"
}

run() { # NAME ARGS...
	local name=$1 w r g
	shift
	echo "requester bench $* -o json > $OUT/$name.json" >&2
	w=$(cpu "$worker_pid") r=$(cpu "$redis_pid") g=$(cpu "$registry_pid")
	"$requester" bench "$@" -o json >"$OUT/$name.json"
	# CPU seconds each process used during this bench (the registry's
	# include a cold bench's tagging and raw HEADs).
	awk -v n="$name" -v w="$(cpu "$worker_pid") $w" -v r="$(cpu "$redis_pid") $r" -v g="$(cpu "$registry_pid") $g" '
		function d(s, a) { split(s, a, " "); return a[1] - a[2] }
		BEGIN { printf "# %s CPU s: worker %.2f, redis %.2f, registry %.2f\n", n, d(w), d(r), d(g) }' >>"$OUT/machine.txt"
}

rm -f "$OUT"/warm-*.json "$OUT"/cold-*.json
for path in $PATHS; do
	fn=${path#*-}
	case $path in
	warm-*) # the hit path against the echo floor
		run "$path" -f "$OUT/images.txt" --function "$fn" --concurrency "$LEVELS" \
			--duration "$DURATION" --warmup "$WARMUP" --runs "$RUNS" "${floors[@]}" ;;
	cold-*) # every request a new tag, so a miss and a registry fetch;
		# for digest also the raw HEAD floor and the NATS relay floor
		# (a responder that HEADs per request; its NATS traffic goes
		# through the worker's embedded server, and counts in its CPU)
		run "$path" -f "$OUT/images.txt" --function "$fn" --concurrency "$LEVELS" \
			--cold --requests "$COLD_REQUESTS" --runs "$RUNS" "${floors[@]}" ;;
	*) echo "unknown path $path: want warm-FUNCTION or cold-FUNCTION (digest, manifest, config)" >&2; exit 2 ;;
	esac
done

if [ -n "$PERF_OUT" ]; then
	kill -INT "$perf_pid" 2>/dev/null || true
	wait "$perf_pid" 2>/dev/null || true
	echo "worker profile in $PERF_OUT: perf report -i $PERF_OUT --no-children" >&2
fi

# The markdown table of docs/performance.md, from the JSON reports.
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys, os
out = sys.argv[1]
print("| path | function | c | regcap req/s (runs min–max) | p50 | p99 | echo req/s | echo p50 | echo p99 | regcap/echo req/s | raw HEAD req/s | regcap/HEAD req/s | NATS relay req/s | regcap/relay req/s |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
def rate(s):
    runs = s.get("run_throughputs") or [s["throughput_per_second"]]
    return f"{s['throughput_per_second']:.0f} ({min(runs):.0f}–{max(runs):.0f})"
def us(x):
    return f"{x/1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs"
for mode in ("warm", "cold"):
    for fn in ("digest", "manifest", "config"):
        path = os.path.join(out, f"{mode}-{fn}.json")
        if not os.path.exists(path):
            continue
        r = json.load(open(path))
        for l in r["levels"]:
            g, e, q = l["regcap"], l.get("echo"), l.get("ratio")
            cache = ", ".join(f"{k} {v}" for k, v in sorted((g.get("cache") or {}).items()))
            row = [f"{mode} ({cache})", fn, str(l["concurrency"]), rate(g), us(g["p50_us"]), us(g["p99_us"])]
            if e:
                row += [f"{e['throughput_per_second']:.0f}", us(e["p50_us"]), us(e["p99_us"]), f"{q['throughput']:.2f}"]
            else:
                row += ["-"] * 4
            h, hq = l.get("head_floor"), l.get("head_ratio")
            row += [rate(h), f"{hq['throughput']:.2f}"] if h else ["-"] * 2
            y, yq = l.get("relay_floor"), l.get("relay_ratio")
            row += [rate(y), f"{yq['throughput']:.2f}"] if y else ["-"] * 2
            print("| " + " | ".join(row) + " |")
PY
if [ "$CACHE" = redis ]; then
	# What an entry costs Redis (MEMORY USAGE, key and value), per function.
	for fn in manifest_digest oci_manifest oci_manifest_config; do
		# awk, not head: redis-cli must not die of SIGPIPE under pipefail.
		{ redis-cli -p "$REDIS_PORT" --scan --pattern "regcap:v2:$fn:*" 2>/dev/null || true; } | awk 'NR <= 200' |
			while read -r k; do redis-cli -p "$REDIS_PORT" memory usage "$k"; done |
			awk -v fn="$fn" '{s += $1; n++} END {if (n) printf "# redis bytes per %s entry: %.0f (mean of %d keys)\n", fn, s/n, n}'
	done >>"$OUT/machine.txt"
fi
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
cat "$OUT/machine.txt"
echo "results in $OUT" >&2
