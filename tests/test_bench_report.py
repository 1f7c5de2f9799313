"""The benchmark's report: the published figures come from the newest result, and each target
is judged against the issue's bound (no wrk or nginx needed: a recorded run is re-read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import overload, report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def newest_run() -> dict[str, Any]:
    """The newest full run committed under bench/results/ (file names are its date; the
    overload benchmark's, overload-<date>.json, are another report)."""
    return json.loads(max(RESULTS.glob("[0-9]*.json")).read_text())


def verdicts(run: dict[str, Any]) -> dict[str, str]:
    return {target.split(" <=")[0].split(" >=")[0]: verdict
            for target, _measured, verdict in report.targets(run)}


def block_of(doc: Path) -> str:
    text = doc.read_text()
    return text[text.index(report.DOC_BEGIN) + len(report.DOC_BEGIN) + 1:
                text.index(report.DOC_END)]


def test_published_tables_are_the_newest_run_rendered():
    table = report.markdown(newest_run())
    assert (RESULTS / "latest.md").read_text() == f"# Latest benchmark\n\n{table}"
    for doc in (ROOT / "README.md", ROOT / "docs" / "performance.md"):
        assert block_of(doc) == table, f"{doc.name}'s results block is not the newest run"


def test_the_newest_run_is_judged_on_all_five_targets():
    assert len(verdicts(newest_run())) == 5


def test_cpu_above_the_bound_at_the_peak_level_is_not_met():
    run = newest_run()
    for row in run["load"]:
        if row["target"] == "gateway" and row["cpu_ms_per_1k"]:
            row["cpu_ms_per_1k"] = 1000 * (report.MAX_CPU_MS_PER_CALL + 0.001)
    assert verdicts(run)["CPU per non-streamed call"] == "**not met**"


def test_floor_split_is_gateway_minus_floor_per_level():
    run = newest_run()
    split = {r["connections"]: r for r in report.floor_split(run["load"])}
    by = {(r["target"], r["connections"]): r["cpu_ms_per_1k"] / 1000 for r in run["load"]
          if r["cpu_ms_per_1k"]}
    assert set(split) == {c for t, c in by if t == "floor"}
    for conns, row in split.items():
        assert row["own_cpu_ms"] == round(by["gateway", conns] - by["floor", conns], 3)


def test_a_starved_or_failed_stream_is_not_met():
    for field in ("errors", "starved"):
        run = newest_run()
        biggest = max((r for r in run["streams"]["results"] if r["target"] == "gateway"),
                      key=lambda r: r["calls"])
        biggest[field] = 1
        streamed = [v for k, v in verdicts(run).items() if "streamed calls" in k]
        assert streamed == ["**not met**"], field


def test_published_overload_table_is_the_newest_overload_run_rendered():
    run = json.loads(max(RESULTS.glob("overload-*.json")).read_text())
    table = overload.markdown(run)
    assert (RESULTS / "overload-latest.md").read_text() == f"# Overload benchmark\n\n{table}"
    text = (ROOT / "docs" / "performance.md").read_text()
    block = text[text.index(overload.DOC_BEGIN) + len(overload.DOC_BEGIN) + 1:
                 text.index(overload.DOC_END)]
    assert block == table


def test_the_overload_run_is_judged_on_both_targets():
    """Issue 17: p99 of the calls served at 5x capacity, admission on, against the Node
    original's 0.5-1.2 s; the admin port's probes within 100 ms in every run."""
    run = json.loads(max(RESULTS.glob("overload-*.json")).read_text())
    assert len(overload.targets(run)) == 2
