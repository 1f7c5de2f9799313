"""What-if replay: the recorded demand per minute played against a proposed mix of deployments.

``python -m gateway_app.capacity replay --history FILE --ptu 100 --standard 240000,240000``
takes a pool's demand of every recorded minute (its calls and their estimated tokens, served
and unmet: what Azure's admission counts) and plays it against a provisioned deployment of N
PTUs first, then standard deployments with the given TPM quotas, in that priority order, as
the gateway would route it. Each deployment admits what fits its per-minute budget (tokens,
and for a standard one 6 requests per 1,000 TPM, Azure's ratio); the rest spills to the next;
what no deployment fits is refused. It reports the minutes with 429s per deployment, the tokens
each served (those beyond the first are spilled), the tokens refused and the cost.

The model is per minute bucket, with the bucket's calls taken as equal (its tokens / its
calls): Azure and the simulator use a sliding window and calls of their own sizes, so a burst
that straddles two minutes, or a mix of very large and small calls, replays less exactly.
The bucket is the recording's (API_GATEWAY_METRICS_MINUTE_SECONDS, 60 by default): a test
recording against a simulator with a short window records buckets of that window, and the
quotas given are then per bucket, as the simulator's ``tpm`` is per window.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from .planning import MINUTES_PER_MONTH, MinuteSeries, minute_series
from .prices import ModelPrice
from .ptu import DEPLOYMENT_TYPES, ModelThroughput, Planning
from .report import add_input_arguments, read_inputs, unique


@dataclass(frozen=True)
class Deployment:
    """One deployment of the proposed mix and its budgets per minute bucket."""

    name: str
    tokens: float  # tokens per bucket (a provisioned one: input-token equivalents)
    requests: float | None  # calls per bucket; None: no request budget (provisioned)
    provisioned: bool = False


def mix(ptu: int, standard: list[int], model: ModelThroughput) -> list[Deployment]:
    """The proposed deployments in priority order: the PTUs first, if any."""
    found = []
    if ptu:
        found.append(Deployment(f"provisioned {ptu} PTU", ptu * model.tpm_per_ptu, None, True))
    for n, tpm in enumerate(standard):
        found.append(Deployment(f"standard {n + 1} ({tpm:,} TPM)", tpm,
                                max(1, tpm * 6 // 1000)))
    return found


def replay(series: MinuteSeries, deployments: list[Deployment], model: ModelThroughput,
           output_share: float, price: ModelPrice | None) -> dict[str, Any]:
    """Play every bucket's demand against ``deployments``; see the module's docstring."""
    weight = (1 - output_share) + output_share * model.output_ratio  # PTU input equivalents
    served = [0.0] * len(deployments)
    throttled = [0] * len(deployments)  # buckets in which it refused some call
    refused_tokens = 0.0
    refused_calls = 0
    refused_minutes = 0
    for m in series.minutes:
        calls, tokens = m.demand_calls, float(m.demand_tokens)
        if not calls:
            continue
        size = tokens / calls
        for n, d in enumerate(deployments):
            if not calls:
                break
            cost = size * weight if d.provisioned else size
            fit = calls if cost <= 0 else math.floor(d.tokens / cost + 1e-9)
            if d.requests is not None:
                fit = min(fit, int(d.requests))
            taken = min(calls, fit)
            served[n] += taken * size
            if taken < calls:
                throttled[n] += 1
            calls -= taken
        if calls:
            refused_calls += calls
            refused_tokens += calls * size
            refused_minutes += 1
    scale = MINUTES_PER_MONTH / (len(series.minutes) * series.seconds / 60)
    result: dict[str, Any] = {
        "minutes": len(series.minutes), "minuteSeconds": series.seconds,
        "outputShare": round(output_share, 4),
        "demandTokens": sum(m.demand_tokens for m in series.minutes),
        "deployments": [{"name": d.name, "tokensPerMinute": d.tokens,
                         "requestsPerMinute": d.requests, "servedTokens": round(s),
                         "minutesWith429": t}
                        for d, s, t in zip(deployments, served, throttled, strict=True)],
        "spilledTokens": round(sum(served[1:])),
        "refusedTokens": round(refused_tokens), "refusedCalls": refused_calls,
        "minutesWithRefusals": refused_minutes,
    }
    if price is not None:
        ptu = sum(round(d.tokens / model.tpm_per_ptu) for d in deployments if d.provisioned)
        standard = sum(s for d, s in zip(deployments, served, strict=True) if not d.provisioned)
        tokens_cost = (standard * (1 - output_share) / 1000 * price.input_per_1k
                       + standard * output_share / 1000 * price.output_per_1k) * scale
        result["costPerMonth"] = {option: round(ptu * fee + tokens_cost, 2)
                                  for option, fee in price.ptu_month().items()}
        result["standardTokensCostPerMonth"] = round(tokens_cost, 2)
    return result


def format_replay(result: dict[str, Any]) -> str:
    lines = [f"replay of {result['minutes']} minutes (buckets of {result['minuteSeconds']:g} s), "
             f"{result['demandTokens']:,} tokens of demand (served and unmet, estimated)"]
    for d in result["deployments"]:
        lines.append(f"  {d['name']}: served {d['servedTokens']:,} tokens, "
                     f"429s in {d['minutesWith429']} minutes")
    lines.append(f"  spilled beyond the first deployment: {result['spilledTokens']:,} tokens")
    lines.append(f"  refused by every deployment: {result['refusedTokens']:,} tokens "
                 f"({result['refusedCalls']} calls, in {result['minutesWithRefusals']} minutes)")
    if "costPerMonth" in result:
        lines.append("  per month: " + ", ".join(f"{o} ${v:,.0f}"
                                                 for o, v in result["costPerMonth"].items()))
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_app.capacity replay",
        description="Replay the recorded per-minute demand (served and unmet) against a "
                    "proposed mix: N PTUs first, then standard deployments in order.")
    add_input_arguments(parser)
    parser.add_argument("--pool", default="", metavar="NAME",
                        help="the deployment pool whose demand to replay (default: /lb's list)")
    parser.add_argument("--model", default="default",
                        help="the PTU table's model for the provisioned deployment and prices")
    parser.add_argument("--ptu", type=int, default=0, metavar="N",
                        help="PTUs of a provisioned deployment tried first (0: none)")
    parser.add_argument("--standard", default="", metavar="TPM[,TPM...]",
                        help="TPM quotas of standard deployments, in priority order")
    parser.add_argument("--output-share", type=float, metavar="SHARE",
                        help="share of output tokens (default: the configuration's, else "
                             "measured from the recording)")
    parser.add_argument("--deployment-type", choices=DEPLOYMENT_TYPES)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        standard = [int(v) for v in args.standard.split(",") if v.strip()]
    except ValueError:
        parser.error("--standard takes whole TPM quotas separated by commas")
    if args.ptu < 0 or any(q < 1 for q in standard) or not (args.ptu or standard):
        parser.error("give --ptu N (N > 0) or --standard quotas (each > 0), or both")
    args.interval = None
    inputs = read_inputs(parser, args, "replay")
    if inputs is None:
        return 1
    section, intervals = inputs
    planning = Planning.from_section(section, deployment_type=args.deployment_type,
                                     output_share=args.output_share)
    if args.model not in planning.table:
        parser.error(f"--model {args.model} is not in the PTU table")
    pool = args.pool or None
    members = [i for i in intervals if i.pool == pool]
    series = minute_series(unique(members))
    if series is None or not series.minutes:
        print("replay: the inputs hold no per-minute figures for that pool", file=sys.stderr)
        return 1
    model = planning.table[args.model]
    share = planning.output_share
    if share is None:
        served = sum(m.served for m in series.minutes)
        share = sum(m.completion for m in series.minutes) / served if served else 0.0
    result = replay(series, mix(args.ptu, standard, model), model, share,
                    planning.prices.get(args.model))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(format_replay(result))
    return 0
