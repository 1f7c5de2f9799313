"""Environment -> one frozen Settings object, validated once at start-up.

Every setting is a field below with the variable it is read from, a converter and, for optional
ones, a default with the reason it was chosen. Required variables are those of the original
Node.js gateway; new ones are optional and prefixed ``API_GATEWAY_``.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """Required variables are missing or values are malformed.

    ``problems`` holds one text per bad variable, each naming it; the message joins them with
    "; " so start-up still reports them on one line.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("; ".join(self.problems))


LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


GATEWAY_KEY_MIN_LENGTH = 16
GATEWAY_KEY_MIN_DISTINCT = 8


def _gateway_key(raw: str) -> str:
    """The gateway key, refused when it is short or repetitive. /reconfig accepts the right key
    from any address at any time (README, Security), so the key alone keeps guessing hopeless;
    a length can be checked, randomness cannot."""
    key = _text(raw)
    if len(key) < GATEWAY_KEY_MIN_LENGTH or len(set(key)) < GATEWAY_KEY_MIN_DISTINCT:
        raise ValueError(
            f"is too weak: give at least {GATEWAY_KEY_MIN_LENGTH} characters, "
            f"{GATEWAY_KEY_MIN_DISTINCT} of them different, for example from "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def _path_segment(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._~-]+", raw.strip()):
        raise ValueError("must be one URL path segment (letters, digits, '.', '_', '~', '-')")
    return raw.strip()


def _number(low: float, high: float | None = None, integer: bool = False) -> Callable[[str], Any]:
    def convert(raw: str) -> float | int:
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ValueError(f"must be {kind}, got {raw!r}") from None
        if value != value or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"must be {bounds}, got {raw!r}")
        return value

    return convert


def _positive(raw: str) -> float:
    value = _number(0.0)(raw)
    if value <= 0:
        raise ValueError(f"must be a positive number, got {raw!r}")
    return value


def _log_level(raw: str) -> str:
    if raw.strip().lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of debug, info, warn, error, fatal; got {raw!r}")
    return raw.strip().lower()


def _log_format(raw: str) -> str:
    if raw.strip().lower() not in ("text", "json"):
        raise ValueError(f"must be text or json, got {raw!r}")
    return raw.strip().lower()


def _on_off(raw: str) -> str:
    if raw.strip().lower() not in ("on", "off"):
        raise ValueError(f"must be on or off, got {raw!r}")
    return raw.strip().lower()


def _key_list(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _optional(raw: str) -> str:
    return raw.strip()


def _redis_url(raw: str) -> str:
    """A redis:// or rediss:// URL, or empty (off). Errors never repeat the value: it may
    hold a password."""
    raw = raw.strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must be a redis:// or rediss:// (TLS) URL")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise ValueError("has a malformed port") from None
    if not host:
        raise ValueError("names no host")
    if parts.path not in ("", "/") and not re.fullmatch(r"/\d+", parts.path):
        raise ValueError("may end with a database number only (/0)")
    return raw


def redacted_url(url: str) -> str:
    """A Redis URL fit to show: its password replaced by ``***``, its query left out."""
    parts = urlsplit(url)
    user = parts.username or ""
    secret = "***" if parts.password is not None else ""
    auth = f"{user}:{secret}@" if secret else (f"{user}@" if user else "")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{auth}{parts.hostname}{port}{parts.path}"


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"must be on or off, got {raw!r}")
    return value in ("on", "true", "1", "yes")


def _redis_prefix(raw: str) -> str:
    if raw.strip() and not re.fullmatch(r"[A-Za-z0-9:._{}-]{1,64}", raw.strip()):
        raise ValueError("must be 1 to 64 letters, digits or ':', '.', '_', '-', '{', '}'")
    return raw.strip()


def var(name: str, convert: Callable[[str], Any], default: Any = MISSING,
        secret: bool = False) -> Any:
    """Declare a field read from environment variable ``name`` through ``convert``."""
    meta = {"env": name, "convert": convert}
    if default is MISSING:
        return field(metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """All tunables of one gateway process. Build it with :meth:`from_env`."""

    # --- required, as in the original gateway ---
    gateway_key: str = var("API_GATEWAY_KEY", _gateway_key, secret=True)
    config_file: str = var("API_GATEWAY_CONFIG_FILE", _text)
    name: str = var("API_GATEWAY_NAME", _text)
    env: str = var("API_GATEWAY_ENV", _path_segment)
    # minutes; fractions allowed so tests and demos can close intervals in seconds
    metrics_interval_minutes: float = var("API_GATEWAY_METRICS_CINTERVAL", _positive)
    # closed intervals kept in memory; 600 bounds memory per endpoint
    metrics_history: int = var("API_GATEWAY_METRICS_CHISTORY", _number(1, 600, integer=True))

    # --- optional, kept from the original ---
    port: int = var("API_GATEWAY_PORT", _number(1, 65535, integer=True), 8000)
    host: str = var("API_GATEWAY_HOST", _text, "0.0.0.0")
    log_level: str = var("API_GATEWAY_LOG_LEVEL", _log_level, "info")

    # --- optional, new ---
    # Each call holds a worker thread for the whole model answer (seconds, or minutes when
    # streamed), so the thread count is the number of concurrent calls. An idle thread costs
    # little memory; waitress's default of 4 would queue the fifth call.
    threads: int = var("API_GATEWAY_THREADS", _number(1, 10000, integer=True), 512)
    # Open client connections (busy or keep-alive). Waitress's default of 100 is too low for a
    # gateway that many applications keep connections open to.
    connection_limit: int = var("API_GATEWAY_CONNECTION_LIMIT", _number(1, 100000, integer=True),
                                2048)
    # seconds to open a TCP/TLS connection to a backend; Azure answers in milliseconds, so a
    # backend that takes longer is unreachable and the next one should be tried.
    connect_timeout: float = var("API_GATEWAY_CONNECT_TIMEOUT", _positive, 5.0)
    # seconds of silence allowed from a backend; a large model may think a long while before the
    # first byte of a non-streamed answer.
    read_timeout: float = var("API_GATEWAY_READ_TIMEOUT", _positive, 120.0)
    # seconds one attempt may take in all, headers and body, streamed or not: the read timeout
    # only measures silence, so a backend trickling a byte a second could hold a worker
    # forever. Ten minutes covers the longest streamed completions (16k tokens at ~30/s).
    call_timeout: float = var("API_GATEWAY_CALL_TIMEOUT", _positive, 600.0)
    # bytes of a non-streamed answer (after decoding); past it the client gets a JSON 502. The
    # largest legitimate answers are embeddings batches: 2,048 inputs of 3,072 floats are about
    # 75 MB as JSON, so 128 MiB leaves room while four hostile answers stay far from a
    # container's memory limit.
    max_response_bytes: int = var("API_GATEWAY_MAX_RESPONSE_BYTES",
                                  _number(1024, integer=True), 128 * MIB)
    # bytes; Azure OpenAI refuses requests above 20 MB (images in base64), so larger bodies are
    # refused here without being read.
    max_body_bytes: int = var("API_GATEWAY_MAX_BODY_BYTES", _number(1024, integer=True), 20 * MIB)
    # seconds of cooldown after a 429 that names no retry-after; Azure sends one, others may not.
    default_retry_after: float = var("API_GATEWAY_DEFAULT_RETRY_AFTER", _number(0.0), 10.0)
    # seconds; a cap on any retry-after, so a bogus header cannot take an endpoint out for days.
    max_retry_after: float = var("API_GATEWAY_MAX_RETRY_AFTER", _positive, 300.0)
    # seconds an endpoint is benched after a fault (connection error, timeout, 5xx); it doubles
    # with each fault in a row up to the maximum and resets on success, so a dead deployment does
    # not add its timeout to every call.
    failure_cooldown: float = var("API_GATEWAY_FAILURE_COOLDOWN", _number(0.0), 2.0)
    failure_cooldown_max: float = var("API_GATEWAY_FAILURE_COOLDOWN_MAX", _number(0.0), 60.0)
    # Bounds on one call's failover, enforced by the proxy. Backends tried per call: the
    # original tried every endpoint, and 10 keeps that for any ordinary list while a list of
    # thousands cannot turn one call into thousands of attempts.
    max_attempts: int = var("API_GATEWAY_MAX_ATTEMPTS", _number(1, 1000, integer=True), 10)
    # seconds one call may spend failing over, its attempts together; once past, no further
    # backend is tried. Generous (over two read timeouts) so ordinary failover is never cut.
    failover_timeout: float = var("API_GATEWAY_FAILOVER_TIMEOUT", _positive, 300.0)
    # seconds given to calls in flight after SIGTERM; Kubernetes waits 30 s by default.
    shutdown_grace: float = var("API_GATEWAY_SHUTDOWN_GRACE", _number(0.0), 25.0)
    # text for people, json for log collectors
    log_format: str = var("API_GATEWAY_LOG_FORMAT", _log_format, "text")
    # comma-separated keys clients must send (api-key or Authorization: Bearer); more can be
    # listed in the configuration file. None anywhere: every route is open, as in the original.
    client_keys: tuple[str, ...] = var("API_GATEWAY_CLIENT_KEYS", _key_list, (), secret=True)
    # wrong gateway keys on /reconfig from one address per minute that get a 401 and a log line
    # each; past it they get 429 and one line for the lot, so a flood costs little. The right
    # key is never refused. A typo or two costs nothing.
    reconfig_max_failures: int = var("API_GATEWAY_RECONFIG_MAX_FAILURES",
                                     _number(1, 1000, integer=True), 5)
    # seconds between checks of the configuration file for changes (a ConfigMap is updated in
    # place); 0 turns the watch off, so only /reconfig reloads.
    config_watch_seconds: float = var("API_GATEWAY_CONFIG_WATCH_SECONDS", _number(0.0), 0.0)
    # path of a JSON-lines file every closed metrics interval is appended to, so capacity data
    # outlives restarts and pod moves (python -m gateway_app.capacity reads it). Empty: off, as
    # in the original, whose history lived in memory only; a container's disk may be read-only.
    metrics_history_file: str = var("API_GATEWAY_METRICS_HISTORY_FILE", _optional, "")
    # bytes; past this the history file becomes FILE.1 (replacing the last one) and a new one
    # starts, so an unattended gateway cannot fill its volume. A line is about 0.4 KB per
    # endpoint and interval, plus 0.2 KB per minute that saw calls (perMinute): 64 MiB holds
    # about two weeks of busy 1-minute intervals for 4 endpoints.
    # 0: never rotate.
    metrics_history_file_max_bytes: int = var("API_GATEWAY_METRICS_HISTORY_FILE_MAX_BYTES",
                                              _number(0, integer=True), 64 * MIB)
    # seconds of one bucket of the per-minute figures each interval records (perMinute):
    # Azure's quotas and PTUs are per minute, hence 60. Shorter only to record traffic against
    # a simulator whose window_seconds is shorter (tests), so a replay can use the same length.
    metrics_minute_seconds: float = var("API_GATEWAY_METRICS_MINUTE_SECONDS",
                                        _number(0.1, 3600.0), 60.0)

    # --- optional, new: staying up under overload ---
    # A second listener, on the same host, with its own threads, serving only the probes,
    # metrics, instance information, capacity, dashboard, OpenAPI document and
    # reconfiguration, so they answer while every worker of the main port is busy. 0: off
    # (one port, as in the original). The main port keeps serving those routes either way.
    admin_port: int = var("API_GATEWAY_ADMIN_PORT", _number(0, 65535, integer=True), 0)
    # worker threads of the admin listener; a probe or a scrape takes milliseconds, so four
    # serve a kubelet, Prometheus and an operator at once.
    admin_threads: int = var("API_GATEWAY_ADMIN_THREADS", _number(1, 256, integer=True), 4)
    # calls in progress at once (streams until their last byte) beyond which a call gets an
    # immediate 503 with retry-after instead of a place in waitress's queue, where it would
    # wait for a thread. Probes and admin routes are never refused. 0: THREADS minus an
    # eighth of them (at least 1, at most 16), so a free worker answers refusals and probes
    # at once (waitress hands a request over only when a thread is free). A value of THREADS
    # or more turns refusals off: calls queue, as before this setting.
    max_in_progress: int = var("API_GATEWAY_MAX_IN_PROGRESS", _number(0, integer=True), 0)
    # seconds from a request's first byte to its last (line, headers and body). A client
    # that has not sent a whole request by then gets a 408 and is disconnected, so half-sent
    # requests cannot hold connections; waitress's own timeout only measures silence, which a
    # byte every few seconds resets. 60 s: nginx's client_header_timeout; a 20 MiB body
    # arrives in time at 3 Mbit/s.
    request_read_timeout: float = var("API_GATEWAY_REQUEST_READ_TIMEOUT", _positive, 60.0)

    # --- shared state between replicas (Redis): all of it off unless REDIS_URL is set ---
    # redis:// or rediss:// (TLS) URL of a Redis through which replicas share cooldowns,
    # fault streaks, reload requests and metrics. Empty: one process on its own, as before,
    # needing no Redis. Hidden from repr: the URL may carry a password.
    redis_url: str = var("API_GATEWAY_REDIS_URL", _redis_url, "", secret=True)
    # the Redis password when the URL carries none, so it can come from a Secret of its own;
    # giving it in both places is refused
    redis_password: str = var("API_GATEWAY_REDIS_PASSWORD", _optional, "", secret=True)
    # prefix of every Redis key and channel, so several gateways can share one Redis. Empty:
    # apirouter:{API_GATEWAY_ENV}:, which keeps environments apart.
    redis_prefix: str = var("API_GATEWAY_REDIS_PREFIX", _redis_prefix, "")
    # seconds to connect to Redis or wait for its answer. Only background threads and the
    # admin routes ever wait on Redis; one on the same network answers in a millisecond, so
    # half a second means it is down or overloaded.
    redis_timeout: float = var("API_GATEWAY_REDIS_TIMEOUT", _positive, 0.5)
    # seconds between writes of this replica's metrics to Redis: how old the cluster view of
    # /metrics may be. Each write is a few Redis operations, whatever the call rate.
    redis_sync_seconds: float = var("API_GATEWAY_REDIS_SYNC_SECONDS", _positive, 1.0)
    # several `python wsgi.py` on one host listening on the same port (SO_REUSEPORT; the
    # kernel spreads new connections over them), so one VM's cores can all serve; with
    # Redis as their shared state they act as one gateway. Off: a second process on the
    # port fails to start, as before.
    reuse_port: bool = var("API_GATEWAY_REUSE_PORT", _flag, False)

    # --- headroom routing (README, "Headroom routing") ---
    # on: a deployment whose latest x-ratelimit-remaining-* reading, less the estimated cost of
    # what was sent to it since, cannot fit a call is passed over before it answers 429: each
    # 429 costs the client a round trip and counts against the quota for nothing. off: only a
    # 429 moves traffic, as in the original.
    headroom: str = var("API_GATEWAY_HEADROOM", _on_off, "on")
    # seconds a reading is trusted after it arrives. Azure refills its windows continuously (a
    # minute's quota comes back at 1/60 a second), so a reading that says "full" grows wrong:
    # in 5 s at most 1/12 of the quota comes back unseen, and a deployment passed over is
    # tried again 5 s later at the latest; a burst of calls (what the count-down is for) is
    # over by then. At most 10 s: Azure evaluates rates over slices of 1 or 10 s.
    headroom_seconds: float = var("API_GATEWAY_HEADROOM_SECONDS", _number(0.0, 10.0), 5.0)

    # --- container information, shown by /instanceinfo ---
    image_id: str = var("IMAGE_ID", _optional, "")
    node_name: str = var("NODE_NAME", _optional, "")
    pod_name: str = var("POD_NAME", _optional, "")
    pod_namespace: str = var("POD_NAMESPACE", _optional, "")
    pod_svc_account: str = var("POD_SVC_ACCOUNT", _optional, "")

    # API_GATEWAY_* variables (in any case) that name no setting, typos most likely; reported
    # at start-up with unknown_name_warning()
    unknown_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.admin_port and self.admin_port == self.port:
            raise SettingsError("API_GATEWAY_ADMIN_PORT must differ from API_GATEWAY_PORT, "
                                f"both are {self.port}")

    @property
    def route_prefix(self) -> str:
        """Where every route of the original lives."""
        return f"/api/v1/{self.env}/apirouter"

    @property
    def redis_key_prefix(self) -> str:
        """What every Redis key and channel of this gateway starts with."""
        return self.redis_prefix or f"apirouter:{self.env}:"

    @property
    def logging_level(self) -> int:
        return LOG_LEVELS[self.log_level]

    @property
    def headroom_on(self) -> bool:
        return self.headroom == "on"

    @property
    def metrics_interval_seconds(self) -> float:
        return self.metrics_interval_minutes * 60.0

    @classmethod
    def variables(cls) -> list[tuple[str, str, Any]]:
        """(variable, field name, default or MISSING) for every setting, in declaration order."""
        return [(f.metadata["env"], f.name, f.default) for f in fields(cls) if "env" in f.metadata]

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Read and check every variable; raise one SettingsError naming every bad one."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        known = {name for name, _field, _default in cls.variables()}
        # Case-blind: api_gateway_threads is a typo too, however much the shell accepts it.
        unknown = sorted(k for k in environ
                         if k.upper().startswith("API_GATEWAY_") and k not in known)
        for f in fields(cls):
            if "env" not in f.metadata:
                continue
            name = f.metadata["env"]
            raw = environ.get(name)
            if raw is None or (raw.strip() == "" and f.default is MISSING):
                if f.default is MISSING:
                    problems.append(f"{name} is required but not set" + _typo_hint(name, unknown))
                continue
            try:
                values[f.name] = f.metadata["convert"](raw)
            except ValueError as exc:
                problems.append(f"{name} {exc}")
        if values.get("redis_password") and _url_password(values.get("redis_url", "")):
            problems.append("API_GATEWAY_REDIS_PASSWORD is set and API_GATEWAY_REDIS_URL "
                            "carries a password too; give it in one place")
        if problems:
            raise SettingsError(problems)
        values["unknown_names"] = tuple(unknown)
        values.update(overrides)
        return cls(**values)

    @staticmethod
    def unknown_name_warning(name: str) -> str:
        """The start-up warning for ``name``, one of unknown_names, with the nearest setting."""
        text = f"environment variable {name} names no setting and is ignored"
        nearest = nearest_variable(name)
        return f"{text}; did you mean {nearest}?" if nearest else text


def _url_password(url: str) -> bool:
    return bool(url) and urlsplit(url).password is not None


def nearest_variable(name: str) -> str | None:
    """The API_GATEWAY_* setting ``name`` most likely misspells, or None when none is close."""
    candidates = [v for v, _field, _default in Settings.variables() if v.startswith("API_GATEWAY_")]
    # Compare what follows the common prefix: with it, every candidate looks 60 % alike.
    tails = {v.removeprefix("API_GATEWAY_"): v for v in candidates}
    close = difflib.get_close_matches(name.upper().removeprefix("API_GATEWAY_"), list(tails),
                                      n=1, cutoff=0.75)
    return tails[close[0]] if close else None


def _typo_hint(required: str, unknown: list[str]) -> str:
    """For a missing variable: the unknown names set in its place, most likely misspellings."""
    typos = [name for name in unknown if nearest_variable(name) == required]
    return f" ({', '.join(typos)} is set: misspelt?)" if typos else ""
