"""The what-if replay: a hand-computed example, and its accuracy against the simulator.

The accuracy test records bursts through a real gateway in front of the simulator configured
as a mix (a "provisioned" deployment, then two standard ones), with a 0.75 s window and the
gateway's minute buckets of 0.75 s, then replays the recording against the same mix and compares
what it predicts with what the simulator did (429s seen by the gateway, tokens served by the
standard deployments).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from gateway_app.capacity.planning import Minute, MinuteSeries
from gateway_app.capacity.prices import ModelPrice
from gateway_app.capacity.ptu import ModelThroughput
from gateway_app.capacity.replay import main, mix, replay
from simulator import SimulatorServer

MODEL = ModelThroughput(tpm_per_ptu=1000, min_ptu=1, increment=1, output_ratio=1)


def minute(n: int, calls: int, tokens: int) -> Minute:
    return Minute(start=60.0 * n, demand_calls=calls, demand_tokens=tokens)


def test_replay_on_a_hand_computed_example():
    # 2 PTUs (2,000 tokens a minute), then a standard deployment of 1,000 TPM (6 RPM)
    series = MinuteSeries(60.0, [minute(0, 10, 1000), minute(1, 30, 3000),
                                 minute(2, 40, 4000), minute(3, 0, 0)])
    price = ModelPrice(ptu_hourly=1, ptu_monthly=100, ptu_yearly=80, input_per_1k=0.01,
                       output_per_1k=0.01)
    result = replay(series, mix(2, [1000], MODEL), MODEL, 0.0, price)
    provisioned, standard = result["deployments"]
    # calls of 100 tokens: the PTUs take 20 a minute, the standard 6 (its request budget)
    assert (provisioned["servedTokens"], provisioned["minutesWith429"]) == (1000 + 2000 + 2000, 2)
    assert (standard["servedTokens"], standard["minutesWith429"]) == (600 + 600, 2)
    assert result["spilledTokens"] == 1200
    assert (result["refusedTokens"], result["refusedCalls"], result["minutesWithRefusals"]) == (
        400 + 1400, 4 + 14, 2)
    # 4 minutes scaled to a month (x 10,950): 1,200 standard tokens -> $131.40, plus 2 PTUs
    assert result["costPerMonth"] == {"hourly": 1591.4, "monthlyReservation": 331.4,
                                      "yearlyReservation": 291.4}


WINDOW = 0.75  # the simulator's window and the gateway's minute bucket, in seconds
# calls of 80, 100 and 140 tokens (200 characters / 4 + max_tokens), in turn: the replay takes
# a minute's calls as equal, so mixed sizes are part of what its error measures
SIZES = (30, 50, 90)
SIM = {"deployments": [
    # the "provisioned" one: 1,000 tokens a window, no request budget to speak of
    {"name": "ptu", "apikey": "k0", "tpm": 1000, "rpm": 10_000, "provisioned": True},
    # standard ones keep Azure's 6 requests per 1,000 tokens (the simulator's default)
    {"name": "std1", "apikey": "k1", "tpm": 1000},
    {"name": "std2", "apikey": "k2", "tpm": 2000},
]}
BURSTS = [8, 14, 22, 35, 12, 28, 40, 18, 30, 10, 25, 38]


def send_burst(url: str, calls: int) -> None:
    """``calls`` calls at once, early in a bucket, then an idle bucket: the simulator's sliding
    window empties before the next burst, as the replay's fixed minutes assume."""
    now = time.time()
    time.sleep((WINDOW - now % WINDOW) + 0.05)
    threads = [threading.Thread(target=requests.post, args=(url,), kwargs={"json": {
        "messages": [{"role": "user", "content": "x" * 200}],
        "max_tokens": SIZES[n % len(SIZES)]}, "timeout": 30}) for n in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(WINDOW - time.time() % WINDOW + WINDOW * 0.5)


def measured(document: dict[str, Any]) -> dict[str, Any]:
    """What the deployments did, from the gateway's own per-minute records: 429 buckets per
    deployment and tokens served by the standard ones."""
    rows = document["endpointMetrics"]
    minutes = [[m for e in row["metrics"]["history"].values()
                for m in e["collectedMetrics"]["perMinute"]["minutes"]] for row in rows]
    return {"minutesWith429": [len({m["start"] for m in ms if m["failedCalls"]})
                               for ms in minutes],
            "spilledTokens": sum(m["promptTokens"] + m["completionTokens"]
                                 for ms in minutes[1:] for m in ms),
            "refusedCalls": sum(m["unmetCalls"] for m in minutes[0])}


def test_replay_predicts_what_the_simulator_did(start_gateway: Callable[..., Any], tmp_path):
    with SimulatorServer({**SIM, "deployments": [
            {**d, "window_seconds": WINDOW, "ttft_ms": 0, "ms_per_token": 0}
            for d in SIM["deployments"]]}, host="127.0.0.1", port=0) as sim:
        gw = start_gateway(
            [{"uri": f"{sim.url}/openai/deployments/{d['name']}/chat/completions"
                     "?api-version=2024-10-21", "apikey": d["apikey"]}
             for d in SIM["deployments"]],
            # the replay models Azure's admission, not the gateway's headroom routing, which
            # passes a full deployment over without a 429
            env={"API_GATEWAY_METRICS_MINUTE_SECONDS": str(WINDOW),
                 "API_GATEWAY_METRICS_CINTERVAL": "0.05", "API_GATEWAY_METRICS_CHISTORY": "600",
                 "API_GATEWAY_HEADROOM": "off"})
        for calls in BURSTS:
            send_burst(f"{gw.url}/lb", calls)
        gw.gateway.collector.stop(flush=True)
        document = gw.metrics()
    recording = tmp_path / "metrics.json"
    recording.write_text(json.dumps(document))
    config = tmp_path / "capacity.json"
    config.write_text(json.dumps({"endpoints": [], "capacity": {"models": {"sim": {
        "tpmPerPtu": 1000, "minPtu": 1, "ptuIncrement": 1, "outputRatio": 1}}}}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--metrics", str(recording), "--config", str(config), "--model", "sim",
                     "--ptu", "1", "--standard", "1000,2000", "--json"]) == 0
    predicted = json.loads(out.getvalue())
    actual = measured(document)
    print("predicted", {k: predicted[k] for k in ("spilledTokens", "refusedCalls")},
          [d["minutesWith429"] for d in predicted["deployments"]], "actual", actual)
    assert predicted["demandTokens"] == sum(50 + SIZES[n % len(SIZES)]
                                            for calls in BURSTS for n in range(calls))
    predicted_429 = sum(d["minutesWith429"] for d in predicted["deployments"])
    actual_429 = sum(actual["minutesWith429"])
    assert abs(predicted_429 - actual_429) <= 0.1 * actual_429
    assert abs(predicted["spilledTokens"] - actual["spilledTokens"]) <= (
        0.1 * actual["spilledTokens"])


def test_replay_command_refuses_what_it_cannot_play(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--history", "x.jsonl"])  # no mix
    with pytest.raises(SystemExit):
        main(["--history", "x.jsonl", "--standard", "lots"])
    old = tmp_path / "old.jsonl"  # a line of a gateway that recorded no minutes
    old.write_text(json.dumps({
        "instanceName": "gw", "intervalMinutes": 1, "endpoint": "e", "priority": 0,
        "collectionTime": "2026-01-01T00:00:00+00:00",
        "collectedMetrics": {"noOfApiCalls": 1, "noOfFailedCalls": 0,
                             "throughput": {"kTokensPerWindow": 0.1},
                             "latency": {"avgResponseTimeMsec": 5}}}) + "\n")
    assert main(["--history", str(old), "--ptu", "15"]) == 1
    assert "no per-minute figures" in capsys.readouterr().err
