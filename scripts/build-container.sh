#!/usr/bin/env bash
# Build the gateway's container image with docker or podman, whichever is usable.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/build-container.sh [--tag IMAGE] [--engine docker|podman] [-- BUILD-ARGS...]

Builds the gateway image from the Dockerfile at the top of the repository.

  --tag IMAGE        name and tag of the image (default: apirouter:latest)
  --engine ENGINE    docker or podman (default: $CONTAINER_ENGINE, else docker when its
                     daemon answers, else podman)
  -- BUILD-ARGS...   passed as they are to "docker build" / "podman build",
                     e.g. -- --pull=never --network host
  -h, --help         this text

No secret goes into the image: keys are given to the container when it starts
(scripts/start-container.sh).
EOF
}

tag="apirouter:latest"
engine="${CONTAINER_ENGINE:-}"
extra=()
while (($#)); do
    case "$1" in
        --tag) [[ $# -ge 2 ]] || { echo "build-container: --tag needs a value" >&2; exit 2; }
            tag="$2"; shift ;;
        --engine) [[ $# -ge 2 ]] || { echo "build-container: --engine needs a value" >&2; exit 2; }
            engine="$2"; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "build-container: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

pick_engine() {
    if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null 2>&1; then
        echo podman
    else
        return 1
    fi
}
if [[ -z "$engine" ]]; then
    engine="$(pick_engine)" || {
        echo "build-container: neither a running docker nor podman was found" >&2
        exit 1
    }
fi
case "$engine" in
    docker | podman) ;;
    *) echo "build-container: unsupported engine: $engine" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for needed in Dockerfile requirements.txt wsgi.py gateway_app; do
    [[ -e "$root/$needed" ]] || { echo "build-container: $root/$needed is missing" >&2; exit 1; }
done

args=(build --file "$root/Dockerfile" --tag "$tag")
# OCI images have no HEALTHCHECK; podman keeps it only in the docker format.
[[ "$engine" == podman ]] && args+=(--format docker)
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" 2>/dev/null | head -n1)"
[[ -n "$version" ]] && args+=(--label "org.opencontainers.image.version=$version")
if revision="$(git -C "$root" rev-parse HEAD 2>/dev/null)"; then
    args+=(--label "org.opencontainers.image.revision=$revision")
fi
args+=(--label "org.opencontainers.image.title=apirouter")
args+=(--label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)")

echo "build-container: $engine building $tag" >&2
"$engine" "${args[@]}" "${extra[@]}" "$root"
echo "build-container: built $tag" >&2
