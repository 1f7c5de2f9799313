"""The headroom benchmark's report (no run needed: a recorded one is re-read)."""

from __future__ import annotations

import json

from bench import headroom
from gateway_app.routing.cost import estimate_cost


def block_of(text: str) -> str:
    return text[text.index(headroom.DOC_BEGIN) + len(headroom.DOC_BEGIN) + 1:
                text.index(headroom.DOC_END)]


def test_published_figures_are_the_newest_run_rendered():
    newest = json.loads(max(headroom.RESULTS.glob("*.json")).read_text())
    table = headroom.report(newest)
    latest = (headroom.RESULTS / "latest.md").read_text()
    assert latest == headroom.LATEST_TITLE + table + "\n"
    for doc in headroom.DOCS:
        assert block_of(doc.read_text()) == table + "\n", f"{doc.name} shows another run"


def test_on_is_compared_with_off_at_each_size():
    row = {"served": 100, "unserved": 0, "client_429": 0, "skips": 0, "p50_ms": 200.0,
           "p99_ms": 1500.0, "tpm_served": 1000, "seconds": 20.0, "calls": 100}
    run = {"date": "2026-12-01T00:00:00Z", "seconds": 60.0, "commit": "abc", "machine": "m",
           "loadavg": [0.5, 0.5, 0.5],
           "settings": {"quick": False, "bursts": [4], "seconds": 20.0, "warmup": 3},
           "results": [{**row, "headroom": "off", "concurrency": 4, "backend_429": 20},
                       {**row, "headroom": "on", "concurrency": 4, "backend_429": 2,
                        "served": 101}]}
    text = headroom.report(run)
    assert "| 4 | -90% | +1% | - | +0% | +0% | +0% |" in text
    assert "20 with headroom off, 2 with it on (-90%)" in text


def test_the_mix_costs_what_the_report_says():
    bodies = [json.loads(b) for b in headroom.payloads(200, seed=19)]
    costs = {estimate_cost(b) for b in bodies}
    assert costs <= set(range(80, 83)) | set(range(900, 905))
    large = sum(1 for b in bodies if b["max_tokens"] == headroom.LARGE["max_tokens"])
    assert 0.15 < large / len(bodies) < 0.35
    assert bodies == [json.loads(b) for b in headroom.payloads(200, seed=19)]
