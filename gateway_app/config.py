"""The configuration file: a marshmallow schema, and loading it into EndpointConfig values.

The original file, ``{"endpoints": [{"uri": ..., "apikey": ...}]}``, is valid as it is. Optional
per-endpoint fields: ``apikeyEnv`` (read the key from that environment variable instead of the
file), ``priority`` (an explicit order; ties keep file order) and ``timeout`` (read timeout in
seconds for this endpoint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why, never a key."""


@dataclass(frozen=True)
class GatewayConfig:
    """A whole validated configuration file."""

    endpoints: list[EndpointConfig]
    # client name -> key, from the optional clientKeys section
    client_keys: dict[str, str] = field(default_factory=dict, repr=False)
    # optional sections, validated by their own schemas, kept as loaded
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointConfig:
    """One backend deployment as configured."""

    uri: str
    api_key: str = field(repr=False)
    priority: int
    timeout: float | None = None


ENV_NAME = validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$",
                           error="must be an environment variable name")


class EndpointSchema(Schema):
    uri = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    apikey = fields.String(validate=validate.Length(min=1))
    apikeyEnv = fields.String(validate=ENV_NAME)
    priority = fields.Integer(strict=True, validate=validate.Range(min=0))
    timeout = fields.Float(validate=validate.Range(min=0, min_inclusive=False))

    @validates_schema
    def one_key_source(self, data: dict[str, Any], **_: Any) -> None:
        if ("apikey" in data) == ("apikeyEnv" in data):
            raise ValidationError("give exactly one of apikey and apikeyEnv", "apikey")


class ClientKeySchema(Schema):
    """A key an application sends to use the gateway; the name shows in logs, the key never."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    key = fields.String(validate=validate.Length(min=8, error="must be at least 8 characters"))
    keyEnv = fields.String(validate=ENV_NAME)

    @validates_schema
    def one_key_source(self, data: dict[str, Any], **_: Any) -> None:
        if ("key" in data) == ("keyEnv" in data):
            raise ValidationError("give exactly one of key and keyEnv", "key")


def _capacity_schema() -> Schema:
    # imported when first used, so `python -m gateway_app.capacity` does not find it loaded
    from .capacity import CapacitySchema

    return CapacitySchema()


class ConfigSchema(Schema):
    # optional: the capacity report's PTU table and endpoint models (gateway_app/capacity.py)
    capacity = fields.Nested(_capacity_schema)
    clientKeys = fields.List(fields.Nested(ClientKeySchema))
    endpoints = fields.List(
        fields.Nested(EndpointSchema), required=True,
        validate=validate.Length(min=1, error="must list at least one endpoint"))


def _flatten(errors: Any, path: str = "") -> list[str]:
    """marshmallow's nested error dict -> lines such as ``endpoints[1].uri: Not a valid URL.``"""
    if isinstance(errors, dict):
        lines = []
        for key, value in errors.items():
            if isinstance(key, int):
                sub = f"{path}[{key}]"
            elif key == "_schema":
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
    for index, entry in enumerate(data["endpoints"]):
        key = _secret(entry, "apikey", "apikeyEnv", f"endpoints[{index}]", environ)
        endpoints.append(EndpointConfig(uri=entry["uri"], api_key=key,
                                        priority=entry.get("priority", index),
                                        timeout=entry.get("timeout")))
    client_keys = {}
    for index, entry in enumerate(data.get("clientKeys", [])):
        client_keys[entry["name"]] = _secret(entry, "key", "keyEnv", f"clientKeys[{index}]",
                                             environ)
    sections = {k: v for k, v in data.items() if k not in ("endpoints", "clientKeys")}
    # stable sort: explicit priorities first by value, file order breaks ties
    return GatewayConfig(sorted(endpoints, key=lambda e: e.priority), client_keys, sections)


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
