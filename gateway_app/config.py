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
    # optional sections, validated by their own schemas, kept as loaded
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointConfig:
    """One backend deployment as configured."""

    uri: str
    api_key: str = field(repr=False)
    priority: int
    timeout: float | None = None


class EndpointSchema(Schema):
    uri = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    apikey = fields.String(validate=validate.Length(min=1))
    apikeyEnv = fields.String(validate=validate.Regexp(
        r"^[A-Za-z_][A-Za-z0-9_]*$", error="must be an environment variable name"))
    priority = fields.Integer(strict=True, validate=validate.Range(min=0))
    timeout = fields.Float(validate=validate.Range(min=0, min_inclusive=False))

    @validates_schema
    def one_key_source(self, data: dict[str, Any], **_: Any) -> None:
        if ("apikey" in data) == ("apikeyEnv" in data):
            raise ValidationError("give exactly one of apikey and apikeyEnv", "apikey")


class ConfigSchema(Schema):
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
        key = entry.get("apikey")
        if key is None:
            key = environ.get(entry["apikeyEnv"], "")
            if not key:
                raise ConfigError(f"endpoints[{index}].apikeyEnv: environment variable "
                                  f"{entry['apikeyEnv']} is not set or empty")
        endpoints.append(EndpointConfig(uri=entry["uri"], api_key=key,
                                        priority=entry.get("priority", index),
                                        timeout=entry.get("timeout")))
    # stable sort: explicit priorities first by value, file order breaks ties
    sections = {k: v for k, v in data.items() if k != "endpoints"}
    return GatewayConfig(sorted(endpoints, key=lambda e: e.priority), sections)


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
