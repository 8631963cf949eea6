#!/usr/bin/env bash
# Installs the Debian packages the service-backed tests use, when missing:
# softhsm2 (PKCS#11 token), prometheus (for promtool), PostgreSQL 15 server binaries,
# chromium + chromium-driver (console browser tests), wrk (server benchmarks),
# faketime (the daemon clock-jump fault test).
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
# browser tests (console) and HTTP load generation (benchmarks)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
