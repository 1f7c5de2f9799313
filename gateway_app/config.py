"""The configuration file: a marshmallow schema, and loading it into EndpointConfig values.

The original file, ``{"endpoints": [{"uri": ..., "apikey": ...}]}``, is valid as it is. Optional
per-endpoint fields: ``apikeyEnv`` (read the key from that environment variable instead of the
file), ``priority`` (an explicit order; ties keep file order), ``timeout`` (read timeout in
seconds for this endpoint) and ``utilizationLimit`` (percent: above the deployment's latest
utilization reading, calls go to the next priority). Optional sections: ``clientKeys`` (keys
applications must send) and ``deployments`` (named pools of backends for the Azure-style and
/v1 routes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .capacity.ptu import CapacitySchema


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


ENV_NAME = validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$",
                           error="must be an environment variable name")


class _BackendSchema(Schema):
    """What every backend has: a key (or where to find it), a priority and a timeout."""

    apikey = fields.String(validate=validate.Length(min=1))
    apikeyEnv = fields.String(validate=ENV_NAME)
    priority = fields.Integer(strict=True, validate=validate.Range(min=0))
    timeout = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
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


class ClientKeySchema(Schema):
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
    weight = fields.Float(validate=validate.Range(min=0, min_inclusive=False))


class PoolSchema(Schema):
    backends = fields.List(fields.Nested(PoolBackendSchema), required=True,
                           validate=validate.Length(min=1, error="must list at least one backend"))
    apiVersion = fields.String(validate=validate.Regexp(r"^\d{4}-\d{2}-\d{2}(-preview)?$",
                                                        error="must look like 2024-10-21"))


class ConfigSchema(Schema):
    # optional: the capacity report's PTU table and endpoint models (gateway_app/capacity/report.py)
    capacity = fields.Nested(CapacitySchema)
    clientKeys = fields.List(fields.Nested(ClientKeySchema))
    deployments = fields.Dict(keys=fields.String(validate=NAME),
                              values=fields.Nested(PoolSchema))
    endpoints = fields.List(
        fields.Nested(EndpointSchema),
        validate=validate.Length(min=1, error="must list at least one endpoint"))

    @validates_schema
    def something_to_serve(self, data: dict[str, Any], **_: Any) -> None:
        if "endpoints" not in data and not data.get("deployments"):
            raise ValidationError("Missing data for required field (or give deployments).",
                                  "endpoints")


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
        raise ConfigError("; ".join(_flatten(exc.messages))) from None
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
    for index, entry in enumerate(data.get("clientKeys", [])):
        client_keys[entry["name"]] = _secret(entry, "key", "keyEnv", f"clientKeys[{index}]",
                                             environ)
    sections = {k: v for k, v in data.items()
                if k not in ("endpoints", "clientKeys", "deployments")}
    # stable sort: explicit priorities first by value, file order breaks ties
    return GatewayConfig(sorted(endpoints, key=lambda e: e.priority), pools, client_keys,
                         sections)


def _pool(name: str, pool: dict[str, Any], environ: Mapping[str, str]) -> PoolConfig:
    backends = []
    for index, entry in enumerate(pool["backends"]):
        where = f"deployments.{name}.backends[{index}]"
        uri = f"{entry['endpoint'].rstrip('/')}/openai/deployments/{entry['deployment']}"
        backends.append(EndpointConfig(
            uri=uri, api_key=_secret(entry, "apikey", "apikeyEnv", where, environ),
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
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return parse_config(document, os.environ if environ is None else environ)
