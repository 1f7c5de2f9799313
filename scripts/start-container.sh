#!/usr/bin/env bash
# Start the gateway's container on this machine with docker or podman.
# Secrets travel from this shell's environment (or an env file of yours) to the container's;
# they are never written on a command line, into a file or to the terminal.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/start-container.sh --config FILE [options] [-- RUN-ARGS...]

Starts the gateway image with FILE mounted read-only as its configuration.

Options:
  --config FILE      the JSON configuration file (required); it must be readable by the
                     container's user (uid 10001), e.g. mode 644: keep keys out of it with
                     "apikeyEnv" (see below)
  --image IMAGE      image to run (default: apirouter:latest)
  --name NAME        container name (default: apirouter)
  --port PORT        port on this machine (default: 8000)
  --address ADDR     address on this machine to publish the port on (default: 0.0.0.0)
  --host-network     share the host's network instead of publishing a port; the gateway
                     then listens on --port itself
  --key-env NAME     also pass the variable NAME from this environment (repeatable)
  --env-file FILE    also read variables from FILE, in the format of docker run --env-file
                     (see .env.sample); handed to the engine as --env-file. Repeatable: a
                     later file wins over an earlier one
  --data-dir DIR     keep the metrics history file in DIR on this machine (mounted
                     read-write; DIR must be writable by uid 10001): sets
                     API_GATEWAY_METRICS_HISTORY_FILE=/var/lib/apirouter/history.jsonl
  --restart POLICY   restart policy when detached (default: unless-stopped)
  --replace          remove an existing container of the same name first
  --foreground       stay attached and remove the container when it stops
  --engine ENGINE    docker or podman (default: $CONTAINER_ENGINE, else docker when its
                     daemon answers, else podman)
  -- RUN-ARGS...     passed as they are to "docker run" / "podman run"
  -h, --help         this text

Environment read from this shell (export the variables first) or from --env-file FILE;
a variable set (not empty) in this shell wins over every file:
  API_GATEWAY_KEY                required: the key that /reconfig/{key} asks for
  <each apikeyEnv and keyEnv>    required: every variable FILE names for a key (endpoints,
                                 backends of deployments, clientKeys); needs python3 to
                                 read FILE, otherwise name them with --key-env
  API_GATEWAY_NAME               default: the container name
  API_GATEWAY_ENV                default: dev
  API_GATEWAY_METRICS_CINTERVAL  default: 60 (minutes)
  API_GATEWAY_METRICS_CHISTORY   default: 168
  any other API_GATEWAY_*        passed on when set (API_GATEWAY_CLIENT_KEYS,
                                 API_GATEWAY_THREADS, ...); otherwise the gateway's defaults

Every API_GATEWAY_* variable and every key set in this shell is handed over as "--env NAME"
without a value: the engine copies it from this environment, so no secret shows up in the
process list or in this script's output. The engine reads the env files itself, and its
--env wins over its --env-file. API_GATEWAY_CONFIG_FILE, API_GATEWAY_PORT and IMAGE_ID are
always this script's own (the port comes from --port).
EOF
}

say() { printf 'start-container: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

config=""
image="apirouter:latest"
name="apirouter"
port="8000"
address="0.0.0.0"
host_network=0
key_envs=()
env_files=()
data_dir=""
restart="unless-stopped"
replace=0
foreground=0
engine="${CONTAINER_ENGINE:-}"
extra=()
need_value() { [[ $# -ge 2 && -n "$2" ]] || { say "$1 needs a value"; exit 2; }; }
while (($#)); do
    case "$1" in
        --config) need_value "$@"; config="$2"; shift ;;
        --image) need_value "$@"; image="$2"; shift ;;
        --name) need_value "$@"; name="$2"; shift ;;
        --port) need_value "$@"; port="$2"; shift ;;
        --address) need_value "$@"; address="$2"; shift ;;
        --host-network) host_network=1 ;;
        --key-env) need_value "$@"; key_envs+=("$2"); shift ;;
        --env-file) need_value "$@"; env_files+=("$2"); shift ;;
        --data-dir) need_value "$@"; data_dir="$2"; shift ;;
        --restart) need_value "$@"; restart="$2"; shift ;;
        --replace) replace=1 ;;
        --foreground) foreground=1 ;;
        --engine) need_value "$@"; engine="$2"; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) say "unknown argument: $1 (see --help)"; exit 2 ;;
    esac
    shift
done

[[ -n "$config" ]] || { say "--config FILE is required (see --help)"; exit 2; }
[[ -f "$config" ]] || die "no such file: $config"
if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "not a port: $port"
fi
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"

# What the env files set, read by the rules docker reads them with (as the gateway's
# --env-file does): this script must know which settings and keys they hold, so that its
# defaults do not hide them and a key kept there counts as given. Values stay in memory.
declare -A file_env=()
read_env_file() {
    local file="$1" line name n=0
    [[ -f "$file" && -r "$file" ]] || die "cannot read env file $file"
    if command -v iconv >/dev/null 2>&1 && ! iconv -f UTF-8 -t UTF-8 "$file" >/dev/null 2>&1
    then
        die "env file $file is not UTF-8"
    fi
    while IFS= read -r line || [[ -n "$line" ]]; do
        n=$((n + 1))
        line="${line%$'\r'}"
        ((n == 1)) && line="${line#$'\xef\xbb\xbf'}"
        line="${line#"${line%%[![:space:]]*}"}"
        [[ -z "$line" || "$line" == "#"* ]] && continue
        # Only the line number is shown: the line may hold a key.
        name="${line%%=*}"
        [[ -n "$name" ]] || die "env file $file line $n: no variable name before '='"
        [[ "$name" != *[$' \t']* ]] ||
            die "env file $file line $n: a variable name must not contain spaces or tabs"
        if [[ "$line" == *=* ]]; then
            file_env["$name"]="${line#*=}"
        elif printenv -- "$name" >/dev/null; then
            # A bare name is taken from this environment, where it wins anyway.
            file_env["$name"]="$(printenv -- "$name")"
        fi
    done <"$file"
}
for file in "${env_files[@]}"; do
    read_env_file "$file"
done
# A variable counts as set when it is not empty, in this shell or else in an env file.
in_shell() { [[ -n "${!1:-}" ]]; }
in_files() { [[ -n "${file_env[$1]:-}" ]]; }
# The value a setting gets in the container: this shell's, else the env files', else $2.
effective() {
    if in_shell "$1"; then
        printf '%s' "${!1}"
    elif in_files "$1"; then
        printf '%s' "${file_env[$1]}"
    else
        printf '%s' "$2"
    fi
}
# The container's user is not the file's owner: it reads the file through "other".
if [[ "$(stat -c '%u' "$config")" != 10001 ]] && (((8#$(stat -c '%a' "$config") & 4) == 0)); then
    say "warning: $config is not readable by others; the container's user (uid 10001)"
    say "warning: will not be able to read it (chmod 644, with keys kept out via apikeyEnv)"
fi

if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    else
        die "neither a running docker nor podman was found"
    fi
fi
case "$engine" in
    docker | podman) ;;
    *) die "unsupported engine: $engine" ;;
esac

# Variables that hold secrets: the gateway key, the keys named by apikeyEnv in the file,
# and those named with --key-env.
secret_vars=(API_GATEWAY_KEY "${key_envs[@]}")
if command -v python3 >/dev/null 2>&1; then
    named="$(python3 - "$config" <<'PY'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    cfg = json.load(f)
cfg = cfg if isinstance(cfg, dict) else {}
def lists(value):
    return value if isinstance(value, list) else []
pools = cfg.get("deployments")
backends = [b for p in (pools.values() if isinstance(pools, dict) else [])
            if isinstance(p, dict) for b in lists(p.get("backends"))]
for entries, field in ((lists(cfg.get("endpoints")), "apikeyEnv"), (backends, "apikeyEnv"),
                       (lists(cfg.get("clientKeys")), "keyEnv")):
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get(field), str):
            print(entry[field])
PY
)" || die "$config is not valid JSON"
    while IFS= read -r var; do
        [[ -n "$var" ]] && secret_vars+=("$var")
    done <<<"$named"
else
    say "python3 not found: pass the variables named by apikeyEnv and keyEnv with --key-env"
fi
# Keys set in this shell go by name and win; those only in an env file reach the engine there.
by_name=()
for var in "${secret_vars[@]}"; do
    [[ "$var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "not a variable name: $var"
    if in_shell "$var"; then
        export "${var?}"
        [[ " ${by_name[*]} " == *" $var "* ]] || by_name+=("$var")
    elif ! in_files "$var"; then
        if ((${#env_files[@]})); then
            die "$var is not set in this environment or the env file (export it first)"
        fi
        die "$var is not set in this environment (export it first)"
    fi
done

inner_port=8000
((host_network)) && inner_port="$port"
grace="$(effective API_GATEWAY_SHUTDOWN_GRACE 25)"  # the gateway's default
[[ "$grace" =~ ^[0-9]+(\.[0-9]*)?$ ]] || die "API_GATEWAY_SHUTDOWN_GRACE is not a number of seconds"
# Whole seconds the engine waits after SIGTERM before SIGKILL: the grace, rounded up, + 10.
stop_timeout=$((10#${grace%%.*} + 10))
[[ "$grace" =~ \.[0-9]*[1-9] ]] && stop_timeout=$((stop_timeout + 1))

mount_opts="ro"
# SELinux hosts (RHEL, Fedora) label the file for containers, or the container cannot read it.
if [[ -r /sys/fs/selinux/enforce && "$(cat /sys/fs/selinux/enforce)" == 1 ]]; then
    mount_opts="ro,z"
fi

args=(run --name "$name"
    --volume "$config:/etc/apirouter/api-router-config.json:$mount_opts"
    --env API_GATEWAY_CONFIG_FILE=/etc/apirouter/api-router-config.json
    --env "API_GATEWAY_PORT=$inner_port"
    --env "IMAGE_ID=$image"
    # Locked down like the Kubernetes pod: read-only root, a small /tmp, no capabilities.
    --read-only --tmpfs "/tmp:rw,nosuid,nodev,size=64m"
    --cap-drop ALL --security-opt no-new-privileges
    # docker stop / podman stop wait this long after SIGTERM: the calls' grace and a margin.
    --stop-timeout "$stop_timeout")
for file in "${env_files[@]}"; do
    args+=(--env-file "$file")
done
# The settings this script defaults: this shell's value, else the env files' (the engine
# reads it there), else the default.
for setting in "API_GATEWAY_NAME=$name" API_GATEWAY_ENV=dev API_GATEWAY_METRICS_CINTERVAL=60 \
    API_GATEWAY_METRICS_CHISTORY=168; do
    var="${setting%%=*}"
    if in_shell "$var"; then
        args+=(--env "$var=${!var}")
    elif ! in_files "$var"; then
        args+=(--env "$setting")
    fi
done
# The settings this script sets itself; every other API_GATEWAY_* variable exported (and not
# empty) here is passed on by name, secrets (API_GATEWAY_KEY, API_GATEWAY_CLIENT_KEYS) and all.
own_settings=" API_GATEWAY_CONFIG_FILE API_GATEWAY_NAME API_GATEWAY_ENV API_GATEWAY_PORT \
API_GATEWAY_METRICS_CINTERVAL API_GATEWAY_METRICS_CHISTORY "
if [[ -n "$data_dir" ]]; then
    own_settings+="API_GATEWAY_METRICS_HISTORY_FILE "
fi
while IFS= read -r var; do
    [[ "$own_settings" == *" $var "* ]] && continue
    [[ " ${by_name[*]} " == *" $var "* ]] && continue
    in_shell "$var" && by_name+=("$var")
done < <(compgen -e | grep '^API_GATEWAY_' || true)
for var in "${by_name[@]}"; do
    args+=(--env "$var")
done
if [[ -n "$data_dir" ]]; then
    [[ -d "$data_dir" ]] || die "no such directory: $data_dir"
    data_dir="$(cd "$data_dir" && pwd)"
    if [[ "$(stat -c '%u' "$data_dir")" != 10001 ]] && (((8#$(stat -c '%a' "$data_dir") & 2) == 0)); then
        say "warning: $data_dir is not writable by the container's user (uid 10001):"
        say "warning: sudo chown 10001:10001 $data_dir"
    fi
    args+=(--volume "$data_dir:/var/lib/apirouter:${mount_opts/ro/rw}"
        --env API_GATEWAY_METRICS_HISTORY_FILE=/var/lib/apirouter/history.jsonl)
fi
if ((host_network)); then
    args+=(--network host)
else
    args+=(--publish "$address:$port:$inner_port")
fi
if ((foreground)); then
    args+=(--rm)
else
    args+=(--detach --restart "$restart")
fi

if ((replace)) && "$engine" container inspect "$name" >/dev/null 2>&1; then
    say "removing the existing container $name"
    "$engine" rm --force "$name" >/dev/null
fi

base="http://127.0.0.1:$port/api/v1/$(effective API_GATEWAY_ENV dev)/apirouter"
say "$engine starting $image as $name on port $port"
if ((foreground)); then
    say "try: curl -s $base/healthz"
    exec "$engine" "${args[@]}" "${extra[@]}" "$image"
fi
"$engine" "${args[@]}" "${extra[@]}" "$image"
say "started; try: curl -s $base/healthz"
say "logs: $engine logs -f $name    stop: $engine stop $name"
