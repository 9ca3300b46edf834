#!/usr/bin/env bash
# Installs Debian's nginx (nginx-light) for `make bench` when no nginx binary is on PATH.
# Idempotent: does nothing when nginx is already installed. Prints the binary's path.
set -euo pipefail

if command -v nginx >/dev/null 2>&1; then
  command -v nginx
  exit 0
fi
if [[ -x /usr/sbin/nginx ]]; then
  echo /usr/sbin/nginx
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "nginx is not installed and apt-get is unavailable; install nginx (>= 1.18) and re-run" >&2
  exit 1
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
echo "installing nginx-light (Debian) for the benchmark" >&2
# The benchmark starts its own nginx; keep the package's service from starting on install.
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends nginx-light >&2; then
  $SUDO apt-get update >&2
  $SUDO apt-get install -y --no-install-recommends nginx-light >&2
fi
# Debian's postinst starts the system service on port 80; the benchmark does not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  $SUDO systemctl stop nginx >&2 || true
elif [[ -f /run/nginx.pid ]]; then
  $SUDO kill "$(cat /run/nginx.pid)" 2>/dev/null || true
fi
command -v nginx 2>/dev/null || echo /usr/sbin/nginx
