#!/usr/bin/env bash
# Prometheus and promtool for tests/test_prometheus.py (Debian's package).
# Idempotent; fails loudly.  The tests run their own prometheus on a loopback
# port: a system service the package may start is not used.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
prometheus --version >/dev/null
promtool --version >/dev/null
