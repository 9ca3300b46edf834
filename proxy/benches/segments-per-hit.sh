#!/usr/bin/env bash
# TCP segments sent, machine-wide, per cache hit of one proxy, and that proxy's CPU per hit: N
# sequential GETs of one cached, flushed object (64 KiB unless SIZE is given) over one keep-alive
# connection (curl), from a one-proxy `blockproxy quickstart`; with RANGE (an HTTP byte range),
# GETs of that range. The segments include curl's requests and the ACKs. Run it on a quiet
# machine, against two binaries, alternated, to compare them (ADR 0021, ADR 0025).
#
#   proxy/benches/segments-per-hit.sh target/release/blockproxy [N] [SIZE] [RANGE]
#   e.g. proxy/benches/segments-per-hit.sh target/release/blockproxy 10000 4194304 bytes=100000-104095
set -euo pipefail
bin=$1
n=${2:-20000}
size=${3:-65536}
range=${4:-}
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
trap 'kill $(cat "$dir/pid") 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" quickstart --dir "$dir/qs" --listen "127.0.0.1:$port" --proxies 1 --log-format text >"$dir/log" 2>&1 &
echo $! >"$dir/pid"
for _ in $(seq 50); do grep -q "quickstart is running" "$dir/log" && break; sleep 0.2; done
proxy=$(grep -o '127.0.0.1:[0-9]*  cache' "$dir/log" | head -1 | cut -d' ' -f1)
token=$(awk '/token:/ {print $2}' "$dir/qs/volumes.yaml")
head -c "$size" /dev/urandom >"$dir/obj"
sum=$(sha256sum "$dir/obj" | cut -d' ' -f1)
url="http://$proxy/v1/volumes/demo/blocks/obj"
auth="authorization: Bearer $token"
range_header=()
[ -n "$range" ] && range_header=(-H "range: $range")
curl -sf -X PUT -H "$auth" -H "x-blockproxy-version: 1" -H "x-blockproxy-checksum: sha256=$sum" \
    --data-binary @"$dir/obj" "$url" -o /dev/null
# Flushed, so that the hits are of a clean file (an unflushed one is checked on every read).
for _ in $(seq 100); do
    curl -sf "http://$proxy/metrics" | grep -q '^blockproxy_cache_dirty_blocks 0' && break
    sleep 0.2
done
curl -sf -H "$auth" "$url" -o /dev/null # the first read verifies the block
[ -n "$range" ] && curl -sf -H "$auth" "${range_header[@]}" "$url" -o /dev/null # and sums its pieces
for _ in $(seq "$n"); do printf 'url = "%s"\noutput = /dev/null\n' "$url"; done >"$dir/curl.cfg"
out_segs() { awk '/^Tcp:/ {getline; print $12}' /proc/net/snmp; }
cpu_ns() { cat /proc/"$(cat "$dir/pid")"/task/*/schedstat | awk '{s += $1} END {print s}'; }
s0=$(out_segs); c0=$(cpu_ns); t0=$(date +%s%N)
curl -sf -H "$auth" "${range_header[@]}" -K "$dir/curl.cfg"
s1=$(out_segs); c1=$(cpu_ns); t1=$(date +%s%N)
awk -v bin="$bin" -v n="$n" -v segs=$((s1 - s0)) -v ns=$((c1 - c0)) -v wall=$((t1 - t0)) -v what="${range:-whole}" 'BEGIN {
    printf "%s: %d hits (%s), %.2f TCP segments per hit (machine-wide), %.0f us of the proxy process'"'"'s CPU per hit, %.0f hits/s\n",
        bin, n, what, segs / n, ns / n / 1000, n / (wall / 1e9) }'
