"""Results: one small JSON file per run, a Markdown table, and the block of docs it updates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DOC_BEGIN = "<!-- bench:results:begin (written by python bench/run.py; do not edit) -->"
DOC_END = "<!-- bench:results:end -->"

# The targets for one gateway process.
MAX_ADDED_P50_MS = 1.0
MAX_CPU_MS_PER_CALL = 0.5
MAX_STREAM_RSS_MB = 150.0
MIN_LITELLM_RATIO = 3.0


def write_json(run: dict[str, Any], directory: Path) -> Path:
    """``<directory>/<date>[-label].json``; never overwrites an earlier run."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = run["date"].replace(":", "")[:17] + (f"-{run['label']}" if run.get("label") else "")
    path = directory / f"{stem}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    path.write_text(json.dumps(run, indent=1) + "\n")
    return path


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


def _idle(idle: dict[str, float]) -> str:
    cpus = sorted(k for k in idle if k != "cpu")
    return " / ".join(_pct(idle[c]) for c in cpus) if cpus else _pct(idle.get("cpu"))


def _by(results: list[dict[str, Any]], target: str) -> dict[int, dict[str, Any]]:
    return {r["connections"]: r for r in results if r["target"] == target}


def _load_section(run: dict[str, Any]) -> list[str]:
    load = run.get("load") or []
    if not load:
        return []
    lines = [
        f"### Non-streamed calls: wrk, keep-alive, {_num(run['settings']['duration'], 0)} s "
        "per level",
        "",
        "| conns | target | req/s | p50 ms | p99 ms | errors | non-2xx | server CPU ms/call "
        "| server CPU use | idle per CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in load:
        cpu = None if r["cpu_ms_per_1k"] is None else r["cpu_ms_per_1k"] / 1000
        lines.append(
            f"| {r['connections']} | {r['target']} | {_num(r['rps'], 0)} | {_num(r['p50_ms'], 3)} "
            f"| {_num(r['p99_ms'], 3)} | {r['errors']} | {r['non2xx']} | {_num(cpu, 3)} "
            f"| {_pct(r['server_cpu_share'])} | {_idle(r['idle'])} |")
    direct, gateway, litellm = _by(load, "direct"), _by(load, "gateway"), _by(load, "litellm")
    header = "| conns | gateway/direct req/s | added p50 ms | added p99 ms |"
    rule = "|---:|---:|---:|---:|"
    if litellm:
        header += " gateway/LiteLLM req/s | LiteLLM added p50 ms |"
        rule += "---:|---:|"
    lines += ["", header, rule]
    for conns, g in gateway.items():
        d = direct.get(conns)
        if d is None:
            continue
        row = (f"| {conns} | {_ratio(g['rps'], d['rps'], 4)} "
               f"| {_num(g['p50_ms'] - d['p50_ms'], 3)} | {_num(g['p99_ms'] - d['p99_ms'], 3)} |")
        if litellm:
            lt = litellm.get(conns)
            row += (f" {_ratio(g['rps'], lt['rps'])} | {_num(lt['p50_ms'] - d['p50_ms'], 3)} |"
                    if lt else " - | - |")
        lines.append(row)
    memory = run.get("gateway_memory") or {}
    if memory:
        lines += ["", f"Gateway after the load: peak RSS {_num(memory.get('peak_rss_mb'), 1)} MB, "
                      f"{memory.get('threads')} threads "
                      f"(API_GATEWAY_THREADS={run['settings']['gateway_threads']})."]
    return lines


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.{digits}f}"


def _stream_section(run: dict[str, Any]) -> list[str]:
    streams = run.get("streams") or {}
    results = streams.get("results") or []
    if not results:
        return []
    shape = streams["shape"]
    lines = [
        f"### Long streamed calls: simulator, ttft {_num(shape['ttft_ms'], 0)} ms + "
        f"{shape['tokens'] - 1} x {_num(shape['ms_per_token'], 0)} ms = "
        f"{shape['expected_seconds']:.1f} s per call, all at once",
        "",
        "| calls | target | errors | starved | TTFB p50 ms | TTFB p99 ms | extra TTFB p50 / p99 ms "
        "| slowest call s | gateway peak RSS MB | gateway threads | gateway CPU ms/call "
        "| client CPU use |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    direct = {r["calls"]: r for r in results if r["target"] == "direct"}
    for r in results:
        extra = "-"
        d = direct.get(r["calls"])
        if r["target"] == "gateway" and d and r["ttfb_p50_ms"] is not None \
                and d["ttfb_p50_ms"] is not None:
            extra = (f"{r['ttfb_p50_ms'] - d['ttfb_p50_ms']:.1f} / "
                     f"{r['ttfb_p99_ms'] - d['ttfb_p99_ms']:.1f}")
        lines.append(
            f"| {r['calls']} | {r['target']} | {r['errors']} | {r['starved']} "
            f"| {_num(r['ttfb_p50_ms'], 1)} | {_num(r['ttfb_p99_ms'], 1)} | {extra} "
            f"| {_num(r['seconds_max'], 2)} | {_num(r.get('peak_rss_mb'), 1)} "
            f"| {_num(r.get('max_threads'))} | {_num(r.get('server_cpu_ms_per_call'), 2)} "
            f"| {_pct(r['client_cpu_share'])} |")
    kinds = [f"{r['target']} {r['calls']}: " + ", ".join(f"{k} x{v}"
                                                         for k, v in r["error_kinds"].items())
             for r in results if r.get("error_kinds")]
    if kinds:
        lines += ["", "Errors: " + "; ".join(kinds) + "."]
    return lines


def targets(run: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows for the issue's goals."""
    rows = []
    load = run.get("load") or []
    direct, gateway, litellm = _by(load, "direct"), _by(load, "gateway"), _by(load, "litellm")
    for conns in (1, 16):
        g, d = gateway.get(conns), direct.get(conns)
        if g and d:
            added = g["p50_ms"] - d["p50_ms"]
            floor = conns / g["rps"] * 1000 if g["rps"] else 0.0  # Little's law, closed loop
            note = f" (queueing alone: about {floor:.1f} ms at this req/s)" if conns > 1 else ""
            rows.append((f"added p50 at {conns} conn <= {MAX_ADDED_P50_MS:g} ms",
                         f"{added:.3f} ms{note}", _verdict(added <= MAX_ADDED_P50_MS)))
    cpus = {c: r["cpu_ms_per_1k"] / 1000 for c, r in gateway.items() if r["cpu_ms_per_1k"]}
    if cpus:
        peak = max(gateway.values(), key=lambda r: r["rps"])
        at_peak = peak["cpu_ms_per_1k"] / 1000
        rows.append((f"CPU per non-streamed call <= {MAX_CPU_MS_PER_CALL:g} ms",
                     f"{at_peak:.3f} ms at {peak['connections']} conns (peak "
                     f"{peak['rps']:,.0f} req/s); {min(cpus.values()):.3f}-"
                     f"{max(cpus.values()):.3f} over all levels",
                     _verdict(at_peak <= MAX_CPU_MS_PER_CALL)))
    ratios = [g["rps"] / litellm[c]["rps"] for c, g in gateway.items()
              if c in litellm and litellm[c]["rps"]]
    if ratios:
        rows.append((f">= {MIN_LITELLM_RATIO:g} x LiteLLM req/s",
                     f"{min(ratios):.2f} x (lowest level)",
                     _verdict(min(ratios) >= MIN_LITELLM_RATIO)))
    streams = [r for r in (run.get("streams") or {}).get("results") or []
               if r["target"] == "gateway"]
    if streams:
        big = max(streams, key=lambda r: r["calls"])
        ok = big["errors"] == 0 and big["starved"] == 0 and \
            big["peak_rss_mb"] is not None and big["peak_rss_mb"] < MAX_STREAM_RSS_MB
        rows.append((f"{big['calls']} streamed calls: 0 errors, none starved, "
                     f"RSS < {MAX_STREAM_RSS_MB:g} MB",
                     f"{big['errors']} errors, {big['starved']} starved, "
                     f"{_num(big['peak_rss_mb'], 1)} MB", _verdict(ok)))
    return rows


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(run: dict[str, Any]) -> str:
    """The whole report: machine, versions, tables, ratios and targets."""
    m, v = run["machine"], run["versions"]
    before = run["machine_before"]
    lines = [
        f"Run of {run['date']} ({run['kind']}, {run['elapsed_s']:.0f} s"
        + (f", label `{run['label']}`" if run.get("label") else "") + "). "
        f"Machine: {m['cpu']}, {m['usable_cpus']} CPUs, {m['memory_gib']} GiB, {m['os']}. "
        f"Python {m['python']}, Flask {v['flask']}, Werkzeug {v['werkzeug']}, "
        f"waitress {v['waitress']}, requests {v['requests']}, urllib3 {v['urllib3']}; "
        f"{v['nginx']}; {v['wrk']}; gateway at commit `{v['gateway']}`"
        + (f"; LiteLLM {v['litellm']}" if v.get("litellm") else "") + ".",
        "",
        f"Pinning: {run['pinning']}. Before the run: load average "
        f"{' / '.join(f'{x:.2f}' for x in before['loadavg'])}, idle per CPU "
        f"{_idle(before['idle'])}.",
        "",
    ]
    lines += _load_section(run)
    streams = _stream_section(run)
    if streams:
        lines += ["", *streams]
    rows = targets(run)
    if rows:
        lines += ["", "### Targets (one gateway process)", "", "| target | measured | |",
                  "|---|---|---|"]
        lines += [f"| {t} | {m_} | {v_} |" for t, m_, v_ in rows]
    if run.get("notes"):
        lines += ["", "Notes:"] + [f"- {note}" for note in run["notes"]]
    return "\n".join(lines) + "\n"


def update_doc(doc: Path, table: str) -> bool:
    """Replace the marked block of ``doc`` with ``table``; False when the markers are missing."""
    if not doc.exists():
        return False
    text = doc.read_text()
    pattern = re.compile(re.escape(DOC_BEGIN) + r".*?" + re.escape(DOC_END), re.S)
    if not pattern.search(text):
        return False
    block = f"{DOC_BEGIN}\n{table}{DOC_END}"
    doc.write_text(pattern.sub(lambda _: block, text, count=1))
    return True
