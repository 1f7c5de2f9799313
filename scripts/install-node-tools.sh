#!/usr/bin/env bash
# Install the Node.js tools the tests use (newman, which runs the Postman collection), pinned,
# into a cache directory. Safe to run again: a matching install is kept and the script returns
# at once; several runs at the same time wait for each other.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install-node-tools.sh [--print-path] [--help]

Installs newman 6.2.2 and exactly the dependencies locked in postman/newman/package-lock.json
(checked against their integrity hashes by `npm ci`) into $APIROUTER_NODE_DIR (default
$APIROUTER_CI_DIR/node, where APIROUTER_CI_DIR defaults to /var/cache/apirouter-ci).
Needs node >= 16 and npm, and the npm registry.

  --print-path  print the path of the newman executable on stdout when done

Exit status: 0 when newman is installed and runs, 1 otherwise (with the reason on stderr).
EOF
}

print_path=0
while (($#)); do
    case "$1" in
        --print-path) print_path=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-node-tools: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

NEWMAN_VERSION="6.2.2"
NODE_MIN_MAJOR=16
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK_DIR="$ROOT/postman/newman"
CI_DIR="${APIROUTER_CI_DIR:-/var/cache/apirouter-ci}"
NODE_DIR="${APIROUTER_NODE_DIR:-$CI_DIR/node}"
NEWMAN="$NODE_DIR/node_modules/.bin/newman"

log() { printf 'install-node-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v node >/dev/null || die "node is not installed (newman needs node >= $NODE_MIN_MAJOR)"
command -v npm >/dev/null || die "npm is not installed"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
((node_major >= NODE_MIN_MAJOR)) || die "node $(node --version) is too old; newman needs >= $NODE_MIN_MAJOR"
grep -q "\"newman\": \"$NEWMAN_VERSION\"" "$LOCK_DIR/package.json" \
    || die "$LOCK_DIR/package.json does not pin newman $NEWMAN_VERSION"

mkdir -p "$NODE_DIR"
# One installer at a time: tests and CI may start it together.
exec 9>"$NODE_DIR/.lock"
flock -w 600 9 || die "another install holds $NODE_DIR/.lock"

stamp_of() { cat "$LOCK_DIR/package.json" "$LOCK_DIR/package-lock.json" | sha256sum | cut -d' ' -f1; }
installed_version() { "$NEWMAN" --version 2>/dev/null || true; }

stamp="$(stamp_of)"
if [[ -x "$NEWMAN" && -f "$NODE_DIR/.stamp" && "$(cat "$NODE_DIR/.stamp")" == "$stamp" \
      && "$(installed_version)" == "$NEWMAN_VERSION" ]]; then
    ((print_path)) && printf '%s\n' "$NEWMAN"
    exit 0
fi

log "installing newman $NEWMAN_VERSION into $NODE_DIR"
rm -rf "$NODE_DIR/node_modules" "$NODE_DIR/.stamp"
cp "$LOCK_DIR/package.json" "$LOCK_DIR/package-lock.json" "$NODE_DIR/"
# --ignore-scripts: nothing newman needs builds at install time, and no package runs code here.
(cd "$NODE_DIR" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error \
    >&2) || die "npm ci failed in $NODE_DIR"
version="$(installed_version)"
[[ "$version" == "$NEWMAN_VERSION" ]] || die "newman --version says '$version', not $NEWMAN_VERSION"
printf '%s' "$stamp" >"$NODE_DIR/.stamp"
log "newman $NEWMAN_VERSION ready: $NEWMAN"
((print_path)) && printf '%s\n' "$NEWMAN"
exit 0
