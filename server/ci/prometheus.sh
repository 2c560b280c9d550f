#!/usr/bin/env bash
# Makes Prometheus and promtool available (Debian's `prometheus` package, installed with apt-get
# when missing) and prints the folder that holds both on stdout (nothing else goes there).
# tests/prometheus.rs checks the alert rules in deploy/prometheus/ with promtool and evaluates
# them in a real Prometheus that scrapes a real Nereid.
#
# Exit status: 0 ok; 3 when they are missing and cannot be installed here (not root, or no
# apt-get), which is a skip (or a failure where the suite is required: see nereid-testkit);
# anything else is a real failure (for example no network).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    dirname "$(command -v promtool)"
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "prometheus and promtool are missing, and installing Debian's package needs root and apt-get" >&2
    exit 3
fi
exec 9>/tmp/nereid-prometheus-install.lock
flock 9
if ! command -v promtool >/dev/null 2>&1; then
    apt-get update -qq >&2
    # The package's service is not started here (no init system needed): only the binaries.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi
dirname "$(command -v promtool)"
