#!/usr/bin/env bash
# Install Debian's chromium for the dashboard test (tests/test_dashboard.py), which runs it
# headless. Safe to run again: when chromium is already there, nothing is fetched.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install-browser.sh [--help]

Installs Debian's chromium package (with apt-get, as root) unless a chromium command is
already on PATH, then prints its version. Exit status 0 when chromium is usable.
EOF
}

case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install-browser: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

if ! command -v chromium >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-browser: chromium is missing and apt-get needs root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists; an install from stale ones can 404.
    apt-get update -qq
    # Recommends would add a desktop's worth of packages; headless rendering needs none.
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

chromium --headless --no-sandbox --version 2>/dev/null || chromium --version
