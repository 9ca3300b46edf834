#!/usr/bin/env bash
# TCP segments sent, machine-wide, per 64 KiB cache hit of one proxy, and that proxy's CPU per
# hit: N sequential GETs of one cached block over one keep-alive connection (curl), from a
# one-proxy `blockproxy quickstart`. The segments include curl's requests and the ACKs. Run it
# on a quiet machine, against two binaries, to compare them (ADR 0021).
#
#   proxy/benches/segments-per-hit.sh target/release/blockproxy [N]
set -euo pipefail
bin=$1
n=${2:-20000}
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
trap 'kill $(cat "$dir/pid") 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" quickstart --dir "$dir/qs" --listen "127.0.0.1:$port" --proxies 1 --log-format text >"$dir/log" 2>&1 &
echo $! >"$dir/pid"
for _ in $(seq 50); do grep -q "quickstart is running" "$dir/log" && break; sleep 0.2; done
proxy=$(grep -o '127.0.0.1:[0-9]*  cache' "$dir/log" | head -1 | cut -d' ' -f1)
token=$(awk '/token:/ {print $2}' "$dir/qs/volumes.yaml")
head -c 65536 /dev/urandom >"$dir/obj"
sum=$(sha256sum "$dir/obj" | cut -d' ' -f1)
url="http://$proxy/v1/volumes/demo/blocks/obj64k"
auth="authorization: Bearer $token"
curl -sf -X PUT -H "$auth" -H "x-blockproxy-version: 1" -H "x-blockproxy-checksum: sha256=$sum" \
    --data-binary @"$dir/obj" "$url" -o /dev/null
curl -sf -H "$auth" "$url" -o /dev/null # the first read verifies the block
for _ in $(seq "$n"); do printf 'url = "%s"\noutput = /dev/null\n' "$url"; done >"$dir/curl.cfg"
out_segs() { awk '/^Tcp:/ {getline; print $12}' /proc/net/snmp; }
cpu_ns() { cat /proc/"$(cat "$dir/pid")"/task/*/schedstat | awk '{s += $1} END {print s}'; }
s0=$(out_segs); c0=$(cpu_ns)
curl -sf -H "$auth" -K "$dir/curl.cfg"
s1=$(out_segs); c1=$(cpu_ns)
awk -v bin="$bin" -v n="$n" -v segs=$((s1 - s0)) -v ns=$((c1 - c0)) 'BEGIN {
    printf "%s: %d hits, %.2f TCP segments per hit (machine-wide), %.0f us of the proxy process'"'"'s CPU per hit\n",
        bin, n, segs / n, ns / n / 1000 }'
