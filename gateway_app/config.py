"""The configuration file: a marshmallow schema, and loading it into EndpointConfig values.

The original file, ``{"endpoints": [{"uri": ..., "apikey": ...}]}``, is valid as it is. Optional
per-endpoint fields: ``apikeyEnv`` (read the key from that environment variable instead of the
file), ``priority`` (an explicit order; ties keep file order), ``timeout`` (read timeout in
seconds for this endpoint) and ``utilizationLimit`` (percent: above the deployment's latest
utilization reading, calls go to the next priority). Optional sections: ``clientKeys`` (keys
applications must send, each with optional limits: ``tpm``, ``rpm``, ``tokenQuota`` with
``quotaPeriod``, ``deployments``), ``clientDefaults`` (those limits for clients without their
own) and ``deployments`` (named pools of backends for the Azure-style and
/v1 routes).

Limits: a deployment listed twice (the same ``uri`` in ``endpoints``, the same endpoint and
deployment in one pool) is refused, naming both indexes; a list holds at most ``MAX_BACKENDS``
backends and the file at most ``MAX_POOLS`` pools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .capacity.ptu import CapacitySchema
from .json_depth import MAX_JSON_DEPTH, nests_deeper
from .usage import NO_LIMITS, PERIODS, ClientLimits, merge_limits


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why, never a key."""


@dataclass(frozen=True)
class GatewayConfig:
    """A whole validated configuration file."""

    endpoints: list[EndpointConfig]
    # deployment pools by name, for /openai/deployments/{name}/... and /v1 (model = name)
    pools: dict[str, PoolConfig] = field(default_factory=dict)
    # client name -> key, from the optional clientKeys section
    client_keys: dict[str, str] = field(default_factory=dict, repr=False)
    # optional sections, validated by their own schemas, kept as loaded
    sections: dict[str, Any] = field(default_factory=dict)
    # client name -> its limits (its own fields, else clientDefaults'); no key in them
    client_limits: dict[str, ClientLimits] = field(default_factory=dict)
    # the limits of clients the file does not list (API_GATEWAY_CLIENT_KEYS' env-1, env-2 ...)
    client_defaults: ClientLimits = NO_LIMITS


@dataclass(frozen=True)
class EndpointConfig:
    """One backend deployment as configured.

    For /lb, ``uri`` is the whole URL of the operation; in a pool it is the deployment's URL
    (``{endpoint}/openai/deployments/{deployment}``), to which each call's operation is added.
    """

    uri: str
    api_key: str = field(repr=False)
    priority: int
    timeout: float | None = None
    weight: float = 1.0
    utilization_limit: float | None = None  # percent of a provisioned deployment's capacity


@dataclass(frozen=True)
class PoolConfig:
    """A named pool: its backends by priority, spread by weight within a priority."""

    name: str
    backends: list[EndpointConfig]
    api_version: str  # for /v1 calls, which carry none


# Backends in one list (``endpoints``, or one pool's ``backends``). A call may try each one in
# turn and each owns a connection pool; real lists hold a handful, and 10,000 made one call
# take 5 s. Pools per file: likewise far above real use, and a bound on memory.
MAX_BACKENDS = 1000
MAX_POOLS = 1000
MAX_ERRORS_SHOWN = 20  # problems named in one ConfigError; the rest are counted
MAX_TIMEOUT = 3600.0  # seconds, an endpoint's read timeout
MAX_WEIGHT = 1_000_000.0

ENV_NAME = validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$",
                           error="must be an environment variable name")


class _BackendSchema(Schema):
    """What every backend has: a key (or where to find it), a priority and a timeout."""

    apikey = fields.String(validate=validate.Length(min=1))
    apikeyEnv = fields.String(validate=ENV_NAME)
    priority = fields.Integer(strict=True, validate=validate.Range(min=0))
    # at most an hour of silence: far above any model's wait, and beyond about 1e10 seconds the
    # socket layer raises OverflowError on every call instead of waiting
    timeout = fields.Float(validate=validate.Range(min=0, max=MAX_TIMEOUT, min_inclusive=False))
    # percent; the azure-openai-deployment-utilization of a provisioned deployment above which
    # calls go to the next priority (headroom routing)
    utilizationLimit = fields.Float(validate=validate.Range(min=0, max=100))

    @validates_schema
    def one_key_source(self, data: dict[str, Any], **_: Any) -> None:
        if ("apikey" in data) == ("apikeyEnv" in data):
            raise ValidationError("give exactly one of apikey and apikeyEnv", "apikey")


class EndpointSchema(_BackendSchema):
    """An endpoint of the original's list: the whole URL of one deployment's operation."""

    uri = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)


LIMIT_FIELDS = ("tpm", "rpm", "tokenQuota", "quotaPeriod", "deployments")
# the original's /lb route, as a client's ``deployments`` names it (registry.DEFAULT_POOL)
LB_ROUTE = "/lb"


class ClientLimitsSchema(Schema):
    """A client's limits (usage.py): each optional; ``clientDefaults`` has the same fields."""

    tpm = fields.Integer(strict=True, validate=validate.Range(min=1))
    rpm = fields.Integer(strict=True, validate=validate.Range(min=1))
    tokenQuota = fields.Integer(strict=True, validate=validate.Range(min=1))
    quotaPeriod = fields.String(validate=validate.OneOf(PERIODS))
    deployments = fields.List(fields.String(validate=validate.Length(min=1)))

    @validates_schema
    def quota_with_period(self, data: dict[str, Any], **_: Any) -> None:
        if ("tokenQuota" in data) != ("quotaPeriod" in data):
            raise ValidationError("give tokenQuota and quotaPeriod together",
                                  "tokenQuota" if "tokenQuota" not in data else "quotaPeriod")


class ClientKeySchema(ClientLimitsSchema):
    """A key an application sends to use the gateway; the name shows in logs, the key never."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    key = fields.String(validate=validate.Length(min=8, error="must be at least 8 characters"))
    keyEnv = fields.String(validate=ENV_NAME)

    @validates_schema
    def one_key_source(self, data: dict[str, Any], **_: Any) -> None:
        if ("key" in data) == ("keyEnv" in data):
            raise ValidationError("give exactly one of key and keyEnv", "key")


DEFAULT_API_VERSION = "2024-10-21"
NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                       error="must be letters, digits, '.', '_' or '-' (at most 64)")


class PoolBackendSchema(_BackendSchema):
    """One backend of a pool: an Azure OpenAI resource and the deployment's name there."""

    endpoint = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    deployment = fields.String(required=True, validate=NAME)
    # relative shares; bounded so that a pool's total stays a finite number
    weight = fields.Float(validate=validate.Range(min=0, max=MAX_WEIGHT, min_inclusive=False))


class PoolSchema(Schema):
    backends = fields.List(
        fields.Nested(PoolBackendSchema), required=True,
        validate=[validate.Length(min=1, error="must list at least one backend"),
                  validate.Length(max=MAX_BACKENDS,
                                  error=f"at most {MAX_BACKENDS} backends in one pool")])
    apiVersion = fields.String(validate=validate.Regexp(r"^\d{4}-\d{2}-\d{2}(-preview)?$",
                                                        error="must look like 2024-10-21"))


class ConfigSchema(Schema):
    # optional: the capacity report's PTU table and endpoint models (gateway_app/capacity/report.py)
    capacity = fields.Nested(CapacitySchema)
    clientKeys = fields.List(fields.Nested(ClientKeySchema))
    clientDefaults = fields.Nested(ClientLimitsSchema)
    deployments = fields.Dict(keys=fields.String(validate=NAME),
                              values=fields.Nested(PoolSchema),
                              validate=validate.Length(max=MAX_POOLS,
                                                       error=f"at most {MAX_POOLS} pools"))
    endpoints = fields.List(
        fields.Nested(EndpointSchema),
        validate=[validate.Length(min=1, error="must list at least one endpoint"),
                  validate.Length(max=MAX_BACKENDS,
                                  error=f"at most {MAX_BACKENDS} endpoints")])

    @validates_schema
    def something_to_serve(self, data: dict[str, Any], **_: Any) -> None:
        if "endpoints" not in data and not data.get("deployments"):
            raise ValidationError("Missing data for required field (or give deployments).",
                                  "endpoints")

    @validates_schema
    def known_deployments(self, data: dict[str, Any], **_: Any) -> None:
        """A client's ``deployments`` name configured pools, or /lb."""
        known = {*data.get("deployments", {}), LB_ROUTE}
        errors: dict[str, Any] = {}
        for index, entry in enumerate(data.get("clientKeys", [])):
            for position, name in enumerate(entry.get("deployments", [])):
                if name not in known:
                    errors.setdefault("clientKeys", {}).setdefault(index, {}).setdefault(
                        "deployments", {})[position] = [
                            f"no deployment pool named {name!r} (nor {LB_ROUTE})"]
        for position, name in enumerate(data.get("clientDefaults", {}).get("deployments", [])):
            if name not in known:
                errors.setdefault("clientDefaults", {}).setdefault("deployments", {})[
                    position] = [f"no deployment pool named {name!r} (nor {LB_ROUTE})"]
        if errors:
            raise ValidationError(errors)

    @validates_schema
    def each_deployment_once(self, data: dict[str, Any], **_: Any) -> None:
        """The registry keeps one state per (list, uri): a second entry would share or reset
        the first one's cooldown and counters, so it is refused."""
        errors: dict[str, Any] = {}
        uris = [entry["uri"] for entry in data.get("endpoints", [])]
        for index, first in _repeats(uris):
            errors.setdefault("endpoints", {})[index] = {
                "uri": [f"same as endpoints[{first}].uri"]}
        for name, pool in data.get("deployments", {}).items():
            where = f"deployments.{name}.backends"
            uris = [_pool_uri(entry) for entry in pool["backends"]]
            for index, first in _repeats(uris):
                errors.setdefault("deployments", {}).setdefault(name, {}).setdefault(
                    "backends", {})[index] = [
                        f"same endpoint and deployment as {where}[{first}]"]
        if errors:
            raise ValidationError(errors)


def _same_deployment(uri: str) -> str:
    """``uri`` as compared for duplicates: scheme and host are case-insensitive."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()))


def _repeats(uris: Iterable[str]) -> list[tuple[int, int]]:
    """(index, index of its first occurrence) for every uri listed before."""
    first: dict[str, int] = {}
    repeats = []
    for index, uri in enumerate(uris):
        seen = first.setdefault(_same_deployment(uri), index)
        if seen != index:
            repeats.append((index, seen))
    return repeats


def _pool_uri(entry: Mapping[str, Any]) -> str:
    """A pool backend's deployment URL: ``{endpoint}/openai/deployments/{deployment}``."""
    return f"{entry['endpoint'].rstrip('/')}/openai/deployments/{entry['deployment']}"


def _flatten(errors: Any, path: str = "") -> list[str]:
    """marshmallow's nested error dict -> lines such as ``endpoints[1].uri: Not a valid URL.``"""
    if isinstance(errors, dict):
        lines = []
        for key, value in errors.items():
            if isinstance(key, int):
                sub = f"{path}[{key}]"
            elif key in ("_schema", "value"):  # "value": marshmallow's level for dict values
                sub = path
            else:
                sub = f"{path}.{key}" if path else str(key)
            lines.extend(_flatten(value, sub))
        return lines
    if isinstance(errors, list):
        return [f"{path or 'configuration'}: {message}" for message in errors]
    return [f"{path or 'configuration'}: {errors}"]


def parse_config(document: Any, environ: Mapping[str, str]) -> GatewayConfig:
    """Validate a decoded configuration and resolve keys; raise ConfigError on any problem."""
    try:
        data = ConfigSchema().load(document)
    except ValidationError as exc:
        lines = _flatten(exc.messages)
        if len(lines) > MAX_ERRORS_SHOWN:  # a list of thousands would give a message as long
            lines = [*lines[:MAX_ERRORS_SHOWN], f"and {len(lines) - MAX_ERRORS_SHOWN} more"]
        raise ConfigError("; ".join(lines)) from None
    endpoints = []
    for index, entry in enumerate(data.get("endpoints", [])):
        key = _secret(entry, "apikey", "apikeyEnv", f"endpoints[{index}]", environ)
        endpoints.append(EndpointConfig(uri=entry["uri"], api_key=key,
                                        priority=entry.get("priority", index),
                                        timeout=entry.get("timeout"),
                                        utilization_limit=entry.get("utilizationLimit")))
    pools = {name: _pool(name, pool, environ)
             for name, pool in data.get("deployments", {}).items()}
    client_keys = {}
    defaults = data.get("clientDefaults", {})
    client_limits = {}
    for index, entry in enumerate(data.get("clientKeys", [])):
        client_keys[entry["name"]] = _secret(entry, "key", "keyEnv", f"clientKeys[{index}]",
                                             environ)
        client_limits[entry["name"]] = merge_limits(entry, defaults)
    sections = {k: v for k, v in data.items()
                if k not in ("endpoints", "clientKeys", "deployments", "clientDefaults")}
    # stable sort: explicit priorities first by value, file order breaks ties
    return GatewayConfig(sorted(endpoints, key=lambda e: e.priority), pools, client_keys,
                         sections, client_limits, merge_limits({}, defaults))


def _pool(name: str, pool: dict[str, Any], environ: Mapping[str, str]) -> PoolConfig:
    backends = []
    for index, entry in enumerate(pool["backends"]):
        where = f"deployments.{name}.backends[{index}]"
        backends.append(EndpointConfig(
            uri=_pool_uri(entry), api_key=_secret(entry, "apikey", "apikeyEnv", where, environ),
            priority=entry.get("priority", index), timeout=entry.get("timeout"),
            weight=entry.get("weight", 1.0), utilization_limit=entry.get("utilizationLimit")))
    return PoolConfig(name, sorted(backends, key=lambda e: e.priority),
                      pool.get("apiVersion", DEFAULT_API_VERSION))


def _secret(entry: dict[str, Any], field_name: str, env_field: str, where: str,
            environ: Mapping[str, str]) -> str:
    """A key given in the file, or read from the environment variable the file names."""
    if field_name in entry:
        return entry[field_name]
    value = environ.get(entry[env_field], "")
    if not value:
        raise ConfigError(f"{where}.{env_field}: environment variable {entry[env_field]} "
                          "is not set or empty")
    return value


def load_config(path: str, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, decode and validate the file at ``path``."""
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
        too_deep = nests_deeper(document)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:  # far deeper than the bound: json gave up on its own
        too_deep = True
    if too_deep:
        raise ConfigError(f"{path} nests arrays or objects more than {MAX_JSON_DEPTH} levels "
                          "deep")
    return parse_config(document, os.environ if environ is None else environ)
