"""The PTU side of capacity planning: Azure's published throughput per model, and the
optional ``capacity`` section of the configuration file that overrides it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .prices import ModelPrice, ModelPriceSchema, prices_from_section

# --- the per-model throughput table -------------------------------------------------------

TABLE_SOURCE = ("Microsoft Learn, 'Provisioned throughput unit (PTU) costs and billing' "
                "(azure/ai-foundry/openai/how-to/provisioned-throughput-onboarding), "
                "page dated 2026-04-07")

# model: (input TPM per PTU, throughput ratio (an output token counts as this many input
# tokens), global & data zone minimum PTU, its increment, regional minimum PTU, its increment)
PUBLISHED: dict[str, tuple[int, int, int, int, int, int]] = {
    "gpt-5.4": (2400, 6, 15, 5, 50, 50),
    "gpt-5.3-codex": (3400, 8, 15, 5, 50, 50),
    "gpt-5.2": (3400, 8, 15, 5, 50, 50),
    "gpt-5.2-codex": (3400, 8, 15, 5, 50, 50),
    "gpt-5.1": (4750, 8, 15, 5, 50, 50),
    "gpt-5.1-codex": (4750, 8, 15, 5, 50, 50),
    "gpt-5": (4750, 8, 15, 5, 50, 50),
    "gpt-5-mini": (23750, 8, 15, 5, 25, 25),
    "gpt-4.1": (3000, 4, 15, 5, 50, 50),
    "gpt-4.1-mini": (14900, 4, 15, 5, 25, 25),
    "gpt-4.1-nano": (59400, 4, 15, 5, 25, 25),
    "o3": (3000, 4, 15, 5, 50, 50),
    "o4-mini": (5400, 4, 15, 5, 25, 25),
    "gpt-4o": (2500, 4, 15, 5, 50, 50),
    "gpt-4o-mini": (37000, 4, 15, 5, 25, 25),
    "o3-mini": (2500, 4, 15, 5, 25, 25),
    "o1": (230, 4, 15, 5, 25, 50),
}
DEFAULT_MODEL = "default"
# An endpoint whose model is unknown is sized as gpt-4o: the most common deployment of the
# original gateway's users, and more conservative (fewer tokens per PTU) than gpt-4.1.
DEFAULT_LIKE = "gpt-4o"
DEPLOYMENT_TYPES = ("global", "datazone", "regional")


@dataclass(frozen=True)
class ModelThroughput:
    """What one PTU of a model serves, and how a deployment of it can be sized."""

    tpm_per_ptu: float  # input tokens per minute
    min_ptu: int
    increment: int
    output_ratio: float  # one output token counts as this many input tokens

    def ptu(self, tpm: float, output_share: float) -> tuple[float, int]:
        """(PTUs needed, deployable PTUs: at least the minimum, in whole increments)."""
        converted = tpm * ((1 - output_share) + output_share * self.output_ratio)
        raw = converted / self.tpm_per_ptu
        if raw <= 0:
            return 0.0, 0
        steps = math.ceil(raw / self.increment - 1e-9)
        return raw, max(self.min_ptu, steps * self.increment)


def published_table(deployment_type: str = "global") -> dict[str, ModelThroughput]:
    """The published figures for one deployment type, plus ``default``."""
    regional = deployment_type == "regional"
    table = {name: ModelThroughput(tpm, rg_min if regional else gl_min,
                                   rg_inc if regional else gl_inc, ratio)
             for name, (tpm, ratio, gl_min, gl_inc, rg_min, rg_inc) in PUBLISHED.items()}
    table[DEFAULT_MODEL] = table[DEFAULT_LIKE]
    return table


# --- the optional "capacity" section of the configuration file ---------------------------

class ModelThroughputSchema(Schema):
    tpmPerPtu = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    minPtu = fields.Integer(strict=True, validate=validate.Range(min=1))
    ptuIncrement = fields.Integer(strict=True, validate=validate.Range(min=1))
    outputRatio = fields.Float(validate=validate.Range(min=0, min_inclusive=False))


class CapacitySchema(Schema):
    """``{"deploymentType", "outputShare", "models": {name: {...}}, "endpointModels": {...}}``.

    ``models`` overrides or adds rows of the table (``default`` included); ``endpointModels``
    maps an endpoint URI, or a deployment name, to a model of the table.
    """

    deploymentType = fields.String(validate=validate.OneOf(DEPLOYMENT_TYPES))
    outputShare = fields.Float(validate=validate.Range(min=0, max=1))
    models = fields.Dict(keys=fields.String(validate=validate.Length(min=1)),
                         values=fields.Nested(ModelThroughputSchema))
    endpointModels = fields.Dict(keys=fields.String(validate=validate.Length(min=1)),
                                 values=fields.String(validate=validate.Length(min=1)))
    # share of minutes a recommended PTU count must serve fully (the report's --target)
    targetCoverage = fields.Float(validate=validate.Range(min=0, max=1, min_inclusive=False))
    prices = fields.Dict(keys=fields.String(validate=validate.Length(min=1)),
                         values=fields.Nested(ModelPriceSchema))

    @validates_schema
    def known_models(self, data: dict[str, Any], **_: Any) -> None:
        known = {*PUBLISHED, DEFAULT_MODEL}
        models = data.get("models", {})
        for name, row in models.items():
            if name not in known and "tpmPerPtu" not in row:
                raise ValidationError(f"{name} is not in the published table, so it needs "
                                      "tpmPerPtu", "models")
        for key, model in data.get("endpointModels", {}).items():
            if model not in known and model not in models:
                raise ValidationError(f"{key} names model {model}, which is neither in the "
                                      "published table nor in models", "endpointModels")


@dataclass(frozen=True)
class Planning:
    """The table and assumptions a report is computed with."""

    table: dict[str, ModelThroughput] = field(default_factory=published_table)
    deployment_type: str = "global"
    # share of the tokens that are output tokens; None: measured from the endpoints' usage
    output_share: float | None = None
    endpoint_models: dict[str, str] = field(default_factory=dict)
    target: float = 0.95  # share of minutes the recommended PTU count serves fully
    prices: dict[str, ModelPrice] = field(
        default_factory=lambda: prices_from_section(None, DEFAULT_MODEL, DEFAULT_LIKE))

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, **overrides: Any) -> Planning:
        """From a loaded ``capacity`` section (or None); keyword overrides win over it."""
        section = dict(section or {})
        kind = overrides.get("deployment_type") or section.get("deploymentType", "global")
        table = published_table(kind)
        for name, row in section.get("models", {}).items():
            base = table.get(name, table[DEFAULT_MODEL])
            table[name] = ModelThroughput(
                tpm_per_ptu=row.get("tpmPerPtu", base.tpm_per_ptu),
                min_ptu=row.get("minPtu", base.min_ptu),
                increment=row.get("ptuIncrement", base.increment),
                output_ratio=row.get("outputRatio", base.output_ratio))
        share = overrides.get("output_share")
        target = overrides.get("target") or section.get("targetCoverage", 0.95)
        return cls(table=table, deployment_type=kind,
                   output_share=section.get("outputShare") if share is None else share,
                   endpoint_models=dict(section.get("endpointModels", {})), target=target,
                   prices=prices_from_section(section.get("prices"), DEFAULT_MODEL,
                                              DEFAULT_LIKE))

    def model_of(self, uri: str) -> tuple[str, str]:
        """(model, how it was found: "config", "deployment" or "default") for an endpoint."""
        deployment = deployment_name(uri)
        for key in (uri, deployment):
            if key and key in self.endpoint_models:
                return self.endpoint_models[key], "config"
        model = model_in_name(deployment, self.table)
        return (model, "deployment") if model else (DEFAULT_MODEL, "default")


_DEPLOYMENT = re.compile(r"/openai/deployments/([^/?#]+)")


def deployment_name(uri: str) -> str:
    match = _DEPLOYMENT.search(uri)
    return match.group(1) if match else ""


def model_in_name(name: str, table: Iterable[str]) -> str | None:
    """The longest model of ``table`` that ``name`` contains as a whole word, if any.

    ``gpt-4o-mini-east`` is gpt-4o-mini, not gpt-4o; ``prod_gpt-4.1`` is gpt-4.1.
    """
    text = name.lower().replace("_", "-")
    for model in sorted((m for m in table if m != DEFAULT_MODEL), key=len, reverse=True):
        if re.search(rf"(?<![a-z0-9.]){re.escape(model.lower())}(?![a-z0-9.])", text):
            return model
    return None
