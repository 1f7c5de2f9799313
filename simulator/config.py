"""The simulator's configuration: one JSON file listing deployments, validated once.

Every field is declared once in ``DEPLOYMENT_FIELDS`` with its check, its default and why the
default is what it is; the ``--help`` text is built from that list.
Unknown names are refused, so a typo never silently falls back to a default. Keys that start
with ``_`` are ignored everywhere, so a file can carry ``"_comment"`` entries.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"  # loopback: a simulator is a test tool, expose it on purpose only
DEFAULT_PORT = 8080
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # Azure's deployment name alphabet


class ConfigError(ValueError):
    """An invalid configuration; the message names the place (``deployments[1].tpm``)."""


@dataclass(frozen=True)
class Field:
    """One per-deployment setting: its check, default, unit and one line of help."""

    name: str
    check: Callable[[Any], Any]
    default: Any
    help: str
    required: bool = False


@dataclass(frozen=True)
class DeploymentConfig:
    """The settings of one simulated deployment (units in the field names)."""

    name: str
    apikey: str
    model: str = "gpt-4o"
    tpm: int = 1000
    rpm: int | None = None
    window_seconds: float = 60.0
    rtt_ms: float = 0.0
    ttft_ms: float = 50.0
    ms_per_token: float = 10.0
    default_max_tokens: int = 16
    embedding_dimensions: int = 1536
    fault_rate_500: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 5.0
    drop_rate: float = 0.0
    seed: int | None = None
    provisioned: bool = False

    @property
    def effective_rpm(self) -> int:
        """Requests per window: ``rpm``, else Azure's 6 per 1000 TPM (at least 1)."""
        if self.rpm is not None:
            return self.rpm
        return max(1, self.tpm * 6 // 1000)


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything one simulator process serves."""

    deployments: tuple[DeploymentConfig, ...]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


# --- value checks: each returns the clean value or raises ValueError with the reason ---------


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def _secret(value: Any) -> str:
    # Never echo the value: it is a key.
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _deployment_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"must be letters, digits, '.', '_' or '-' (it is a URL path segment), got {value!r}"
        )
    return value


def _int(minimum: int, maximum: int | None = None, nullable: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer{' or null' if nullable else ''}, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise ValueError(f"must be >= {minimum}{upper}, got {value!r}")
        return value

    return check


def _number(minimum: float, maximum: float | None = None, exclusive_min: bool = False):
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value
        ):
            raise ValueError(f"must be a number, got {value!r}")
        too_low = value <= minimum if exclusive_min else value < minimum
        if too_low or (maximum is not None and value > maximum):
            low = f"> {minimum}" if exclusive_min else f">= {minimum}"
            high = f" and <= {maximum}" if maximum is not None else ""
            raise ValueError(f"must be {low}{high}, got {value!r}")
        return float(value)

    return check


def _bool(value: Any) -> bool:
    # "true"/"false" as well: --deployment passes every value as text
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError(f"must be true or false, got {value!r}")


_rate = _number(0.0, 1.0)

DEPLOYMENT_FIELDS: tuple[Field, ...] = (
    Field("name", _deployment_name, None,
          "the {name} in /openai/deployments/{name}/...", required=True),
    Field("apikey", _secret, None,
          "the value the api-key header must carry", required=True),
    Field("model", _string, "gpt-4o",
          "model name reported in answers"),
    Field("tpm", _int(1), 1000,
          "tokens per window (per minute with the default window); a call costs its "
          "estimated prompt tokens + max_tokens"),
    Field("rpm", _int(1, nullable=True), None,
          "requests per window; null = Azure's ratio, 6 per 1000 tpm (at least 1)"),
    Field("window_seconds", _number(0.0, exclusive_min=True), 60.0,
          "length of the sliding window that tpm and rpm are counted over, seconds"),
    Field("rtt_ms", _number(0.0), 0.0,
          "network round trip added to every answer, 429s and errors too, milliseconds; the "
          "call is admitted (or refused) when it arrives"),
    Field("ttft_ms", _number(0.0), 50.0,
          "time to first token, milliseconds (small so tests stay fast)"),
    Field("ms_per_token", _number(0.0), 10.0,
          "time per output token after the first, milliseconds"),
    Field("default_max_tokens", _int(1), 16,
          "output tokens when a call gives no max_tokens (OpenAI's completions default)"),
    Field("embedding_dimensions", _int(1, 3072), 1536,
          "length of each embedding vector (text-embedding-ada-002 has 1536)"),
    Field("fault_rate_500", _rate, 0.0,
          "share of calls answered 500, 0.0-1.0"),
    Field("slow_rate", _rate, 0.0,
          "share of calls delayed by slow_seconds before the first byte, 0.0-1.0"),
    Field("slow_seconds", _number(0.0), 5.0,
          "extra delay of a slow call, seconds"),
    Field("drop_rate", _rate, 0.0,
          "share of calls whose connection is closed without an answer, 0.0-1.0"),
    Field("seed", _int(-(2**63), 2**63 - 1, nullable=True), None,
          "seed of this deployment's fault dice; null = a fresh random seed"),
    Field("provisioned", _bool, False,
          "play a provisioned (PTU) deployment: answers say azure-openai-deployment-utilization "
          "(tokens in use in the window / tpm, percent) instead of x-ratelimit-remaining-*"),
)
_FIELDS_BY_NAME = {f.name: f for f in DEPLOYMENT_FIELDS}
_STRING_FIELDS = {"name", "apikey", "model"}


def parse_deployment(data: Any, where: str) -> DeploymentConfig:
    """Validate one deployment object; ``where`` prefixes every error (``deployments[0]``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be an object, got {type(data).__name__}")
    name = data.get("name")
    if isinstance(name, str) and name:
        where = f'{where} ("{name}")'
    unknown = sorted(k for k in data if not k.startswith("_") and k not in _FIELDS_BY_NAME)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r}; known fields: {', '.join(_FIELDS_BY_NAME)}"
        )
    values: dict[str, Any] = {}
    for field in DEPLOYMENT_FIELDS:
        if field.name not in data:
            if field.required:
                raise ConfigError(f"{where}.{field.name}: is required")
            continue
        try:
            values[field.name] = field.check(data[field.name])
        except ValueError as exc:
            raise ConfigError(f"{where}.{field.name}: {exc}") from None
    return DeploymentConfig(**values)


def parse_config(data: Any) -> SimulatorConfig:
    """Validate a whole configuration (the decoded JSON file)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"top level: must be an object, got {type(data).__name__}")
    unknown = sorted(k for k in data if not k.startswith("_") and k not in _TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"top level: unknown field {unknown[0]!r}; known fields: {', '.join(_TOP_LEVEL)}"
        )
    raw = data.get("deployments")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("deployments: must be a non-empty list of deployment objects")
    deployments = tuple(parse_deployment(d, f"deployments[{i}]") for i, d in enumerate(raw))
    return SimulatorConfig(deployments=unique_names(deployments), **_listen(data))


_TOP_LEVEL = ("deployments", "host", "port")


def _listen(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "host" in data:
        try:
            out["host"] = _string(data["host"])
        except ValueError as exc:
            raise ConfigError(f"host: {exc}") from None
    if "port" in data:
        try:
            out["port"] = _int(0, 65535)(data["port"])
        except ValueError as exc:
            raise ConfigError(f"port: {exc}") from None
    return out


def unique_names(deployments: tuple[DeploymentConfig, ...]) -> tuple[DeploymentConfig, ...]:
    """Refuse two deployments with the same name; return them unchanged."""
    seen: set[str] = set()
    for i, dep in enumerate(deployments):
        if dep.name in seen:
            raise ConfigError(f'deployments[{i}] ("{dep.name}").name: duplicate deployment name')
        seen.add(dep.name)
    return deployments


def load_config(path: str | Path) -> SimulatorConfig:
    """Read and validate a configuration file; errors name the file and the place."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def deployment_from_spec(spec: str) -> dict[str, Any]:
    """Turn ``name=a,apikey=k,tpm=600`` (the ``--deployment`` flag) into a deployment object.

    Values of name, apikey and model stay strings; ``null`` becomes None; other values are
    read as integers or numbers when they look like one (validation then checks them).
    """
    out: dict[str, Any] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--deployment {spec!r}: expected key=value pairs, got {part!r}")
        out[key] = value if key in _STRING_FIELDS else _scalar(value.strip())
    return out


def _scalar(text: str) -> Any:
    if text == "null":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def bundled_config_path() -> Path:
    """The demo configuration shipped next to this module."""
    return Path(__file__).with_name("deployments.json")
