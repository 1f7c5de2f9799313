"""Prices for capacity planning: PTUs by billing option and pay-as-you-go tokens, per model,
with their sources; the configuration's ``capacity.prices`` overrides them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from marshmallow import Schema, fields, validate

# --- the table --------------------------------------------------------------------------------

PRICE_SOURCE = (
    "PTU: $2 per PTU-hour (no commitment), $260 per PTU per month (monthly reservation), "
    "$221 per PTU per month (yearly reservation), as given in 'Azure OpenAI Essentials' "
    "(fliphtml5.com/zroi/kpmw, p. 66, published 2026-02-04), looked up 2026-12-01; Microsoft "
    "lists lower hourly rates for global deployments, which we could not confirm. "
    "Pay-as-you-go: gpt-4o $2.50 / $10 and gpt-4o-mini $0.15 / $0.60 per million input / "
    "output tokens (redresscompliance.com, 'Azure OpenAI enterprise pricing guide', "
    "February 2026), looked up 2026-12-01; the other models' figures are OpenAI's list "
    "prices as we remember them, NOT confirmed for Azure. Override them in the "
    "configuration's capacity.prices."
)


@dataclass(frozen=True)
class ModelPrice:
    """What a model costs: PTUs by billing option, and pay-as-you-go tokens (US dollars)."""

    ptu_hourly: float  # per PTU per hour, no commitment
    ptu_monthly: float  # per PTU per month, monthly reservation
    ptu_yearly: float  # per PTU per month, yearly reservation (a twelfth of the year's price)
    input_per_1k: float  # pay-as-you-go, per 1,000 input tokens
    output_per_1k: float  # pay-as-you-go, per 1,000 output tokens

    def ptu_month(self) -> dict[str, float]:
        """One PTU for a month under each billing option."""
        return {"hourly": self.ptu_hourly * 730, "monthlyReservation": self.ptu_monthly,
                "yearlyReservation": self.ptu_yearly}


_PTU = (2.0, 260.0, 221.0)
# model: (input, output) per 1,000 tokens
PAYG: dict[str, tuple[float, float]] = {
    "gpt-4o": (0.0025, 0.01),  # confirmed (see PRICE_SOURCE)
    "gpt-4o-mini": (0.00015, 0.0006),  # confirmed
    "gpt-4.1": (0.002, 0.008),  # not confirmed
    "gpt-4.1-mini": (0.0004, 0.0016),  # not confirmed
    "gpt-4.1-nano": (0.0001, 0.0004),  # not confirmed
    "o1": (0.015, 0.06),  # not confirmed
}


def published_prices() -> dict[str, ModelPrice]:
    """The cited prices (ptu.Planning adds the ``default`` row)."""
    return {model: ModelPrice(*_PTU, i, o) for model, (i, o) in PAYG.items()}


class ModelPriceSchema(Schema):
    """A row of ``capacity.prices``; missing fields keep the published figure."""

    ptuHourly = fields.Float(validate=validate.Range(min=0))
    ptuMonthly = fields.Float(validate=validate.Range(min=0))
    ptuYearly = fields.Float(validate=validate.Range(min=0))
    inputPer1k = fields.Float(validate=validate.Range(min=0))
    outputPer1k = fields.Float(validate=validate.Range(min=0))


_PRICE_KEYS = {"ptuHourly": "ptu_hourly", "ptuMonthly": "ptu_monthly", "ptuYearly": "ptu_yearly",
               "inputPer1k": "input_per_1k", "outputPer1k": "output_per_1k"}


def prices_from_section(rows: Mapping[str, Mapping[str, float]] | None, default: str,
                        default_like: str) -> dict[str, ModelPrice]:
    """The published prices, ``default`` as ``default_like``, with the configuration's rows
    laid over them; a model without a published price takes the default row's figures for
    what its row leaves out."""
    prices = published_prices()
    prices[default] = prices[default_like]
    for model, row in (rows or {}).items():
        base = prices.get(model, prices[default])
        values = {attr: row.get(key, getattr(base, attr)) for key, attr in _PRICE_KEYS.items()}
        prices[model] = ModelPrice(**values)
    return prices


