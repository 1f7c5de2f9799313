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

# The stack ladder, bottom up: (target, row label, what the step over the row before is).
LADDER = (
    ("waitress", "waitress alone", None),
    ("flask", "+ Flask", "Flask adds"),
    ("floor", "+ the Transport call (= floor)",
     "the backend call through urllib3/http.client adds"),
    ("gateway-warn", "the gateway at log level warn (no per-call line)",
     "the gateway's own work but its log line adds"),
    ("gateway", "the gateway", "the per-call log line adds"),
)


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


def _cpu_ms(row: dict[str, Any]) -> float | None:
    """A result row's server CPU per call, in ms (None when it was not measured)."""
    value = row["cpu_ms_per_1k"]
    return None if value is None else value / 1000


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
        f"### Non-streamed calls: wrk (closed loop), keep-alive, "
        f"{_num(run['settings']['duration'], 0)} s per level",
        "",
        "| conns | target | req/s | p50 ms | p99 ms | errors | non-2xx | server CPU ms/call "
        "| server CPU use | idle per CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in load:
        cpu = _cpu_ms(r)
        lines.append(
            f"| {r['connections']} | {r['target']} | {_num(r['rps'], 0)} | {_num(r['p50_ms'], 3)} "
            f"| {_num(r['p99_ms'], 3)} | {r['errors']} | {r['non2xx']} | {_num(cpu, 3)} "
            f"| {_pct(r['server_cpu_share'])} | {_idle(r['idle'])} |")
    lines += _floor_lines(load)
    direct, gateway, litellm = _by(load, "direct"), _by(load, "gateway"), _by(load, "litellm")
    header = ("| conns | gateway/direct req/s | added p50 ms (closed loop) | added p99 ms "
              "| queueing p50 ms (conns / req/s) |")
    rule = "|---:|---:|---:|---:|---:|"
    if litellm:
        header += " gateway/LiteLLM req/s | LiteLLM added p50 ms |"
        rule += "---:|---:|"
    lines += ["", header, rule]
    for conns, g in gateway.items():
        d = direct.get(conns)
        if d is None:
            continue
        queueing = _num(_queueing_ms(g), 1) if conns > 1 else "-"
        row = (f"| {conns} | {_ratio(g['rps'], d['rps'], 4)} "
               f"| {_num(g['p50_ms'] - d['p50_ms'], 3)} | {_num(g['p99_ms'] - d['p99_ms'], 3)} "
               f"| {queueing} |")
        if litellm:
            lt = litellm.get(conns)
            row += (f" {_ratio(g['rps'], lt['rps'])} | {_num(lt['p50_ms'] - d['p50_ms'], 3)} |"
                    if lt else " - | - |")
        lines.append(row)
    if any(c > 1 for c in gateway):
        lines += ["", "In a closed loop every connection sends its next call as soon as the "
                      "previous one is answered, so once the gateway's core is busy the p50 "
                      "from 16 connections on is queueing (about connections / req/s, Little's "
                      "law), not the gateway's own time per call; the open loop below measures "
                      "that."]
    lines += _ladder_section(run)
    lines += _open_section(run)
    memory = run.get("gateway_memory") or {}
    if memory:
        lines += ["", f"Gateway after the load: peak RSS {_num(memory.get('peak_rss_mb'), 1)} MB, "
                      f"{memory.get('threads')} threads "
                      f"(API_GATEWAY_THREADS={run['settings']['gateway_threads']})."]
    return lines


def floor_split(load: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level: the gateway's and the floor's CPU ms/call, and the gateway's own work."""
    floor = _by(load, "floor")
    rows = []
    for conns, g in _by(load, "gateway").items():
        f = floor.get(conns)
        if not f or not g["cpu_ms_per_1k"] or not f["cpu_ms_per_1k"]:
            continue
        gateway_ms, floor_ms = _cpu_ms(g), _cpu_ms(f)
        rows.append({"connections": conns, "gateway_cpu_ms": round(gateway_ms, 3),
                     "floor_cpu_ms": round(floor_ms, 3),
                     "own_cpu_ms": round(gateway_ms - floor_ms, 3),
                     "own_share": round((gateway_ms - floor_ms) / gateway_ms, 3)})
    return rows


def ladder(load: list[dict[str, Any]], conns: int) -> dict[str, Any] | None:
    """The stack ladder at ``conns``: each rung's CPU ms/call (user and system) and its step
    over the rung below; None when neither lower rung was measured there."""
    at = {r["target"]: r for r in load if r["connections"] == conns and r["cpu_ms_per_1k"]}
    if not at.keys() & {"waitress", "flask"}:
        return None
    rows, below = [], None
    for target, _, _ in LADDER:
        r = at.get(target)
        if r is None:  # no step across a missing rung
            below = None
            continue
        cpu, system = _cpu_ms(r), r.get("sys_ms_per_1k")
        rows.append({"target": target, "cpu_ms": round(cpu, 3),
                     "user_ms": None if system is None else round(cpu - system / 1000, 3),
                     "sys_ms": None if system is None else round(system / 1000, 3),
                     "step_ms": None if below is None else round(cpu - below, 3)})
        below = cpu
    return {"connections": conns, "rows": rows}


def _ladder_section(run: dict[str, Any]) -> list[str]:
    found = run.get("ladder")
    if not found:
        return []
    labels = {target: (label, step) for target, label, step in LADDER}
    lines = [
        "", f"### Where the floor's CPU goes: {found['connections']} connections, wrk",
        "",
        "Each rung is served by waitress with the gateway's options, pinned to the same CPU, "
        "in the same run (`bench/floor.py`). waitress alone: a bare WSGI callable that reads "
        "the body and answers nginx's JSON; + Flask: the floor's Flask view answering that "
        "JSON itself; + the Transport call: the floor, which posts the body to nginx through "
        "the gateway's Transport and returns its answer. The gateway at log level warn is the "
        "gateway without its one info line per call; the gateway row is the default (info), as "
        "in the tables above.",
        "",
        "| stack | server CPU ms/call | user ms | sys ms | step |",
        "|---|---:|---:|---:|---|",
    ]
    for r in found["rows"]:
        label, step = labels[r["target"]]
        said = "-" if r["step_ms"] is None else f"{step} {r['step_ms']:.3f} ms"
        lines.append(f"| {label} | {_num(r['cpu_ms'], 3)} | {_num(r['user_ms'], 3)} "
                     f"| {_num(r['sys_ms'], 3)} | {said} |")
    return lines


def _peak_split(load: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The gateway's row at its highest req/s, and the floor split at that level (or None)."""
    peak = max(_by(load, "gateway").values(), key=lambda r: r["rps"])
    return peak, {r["connections"]: r for r in floor_split(load)}.get(peak["connections"])


def _floor_lines(load: list[dict[str, Any]]) -> list[str]:
    split = floor_split(load)
    if not split:
        return []
    own = ", ".join(f"{r['own_cpu_ms']:.3f} ms ({_pct(r['own_share'])}) at {r['connections']}"
                    for r in split)
    return ["", "floor: one Flask view forwarding the body through the gateway's own Transport, "
                "served by waitress with the gateway's options (`bench/floor.py`): the CPU per "
                "call of the stack alone. The gateway's own work, gateway minus floor CPU "
                f"per call (share of the gateway's CPU), by connections: {own}."]


def _queueing_ms(r: dict[str, Any]) -> float | None:
    """Little's law for a closed loop: connections / throughput, in ms."""
    return r["connections"] / r["rps"] * 1000 if r["rps"] else None


def _open_added(run: dict[str, Any]) -> tuple[dict[str, Any], float, float] | None:
    """(gateway row, added p50, added p99) of the open loop, when both targets were measured."""
    rows = {r["target"]: r for r in (run.get("open_loop") or {}).get("results") or []}
    g, d = rows.get("gateway"), rows.get("direct")
    if not g or not d or None in (g["p50_ms"], d["p50_ms"], g["p99_ms"], d["p99_ms"]):
        return None
    return g, g["p50_ms"] - d["p50_ms"], g["p99_ms"] - d["p99_ms"]


def _open_section(run: dict[str, Any]) -> list[str]:
    open_loop = run.get("open_loop") or {}
    results = open_loop.get("results") or []
    if not results:
        return []
    lines = [
        "",
        f"### Non-streamed calls: open loop, {open_loop['connections']} connections at "
        f"{_num(open_loop['rate'], 0)} req/s in total, {_num(run['settings']['duration'], 0)} s",
        "",
        f"Rate: {open_loop['rate_basis']}. Calls are sent on a fixed schedule, evenly spaced "
        "(wrk2's model), by `bench/open_loop_client.py` (one thread per keep-alive connection, "
        "pinned with the fakes); a call's latency runs from when it was due, or from when its "
        "connection became free, to the end of the answer. Client lag is the client's own "
        "lateness, not counted.",
        "",
        "| target | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | non-2xx "
        "| server CPU ms/call | server CPU use | client CPU use | client lag p50 / p99 ms "
        "| idle per CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        cpu = _cpu_ms(r)
        lines.append(
            f"| {r['target']} | {_num(r['achieved_rate'], 0)} | {_num(r['p50_ms'], 3)} "
            f"| {_num(r['p90_ms'], 3)} | {_num(r['p99_ms'], 3)} | {_num(r['max_ms'], 3)} "
            f"| {r['errors']} | {r['non2xx']} | {_num(cpu, 3)} | {_pct(r['server_cpu_share'])} "
            f"| {_pct(r['client_cpu_share'])} "
            f"| {_num(r['lag_p50_ms'], 3)} / {_num(r['lag_p99_ms'], 3)} | {_idle(r['idle'])} |")
    added = _open_added(run)
    if added:
        lines += ["", f"Added by the gateway in the open loop: p50 {added[1]:.3f} ms, "
                      f"p99 {added[2]:.3f} ms."]
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
    g, d = gateway.get(1), direct.get(1)
    if g and d:
        added = g["p50_ms"] - d["p50_ms"]
        rows.append((f"added p50 at 1 conn <= {MAX_ADDED_P50_MS:g} ms", f"{added:.3f} ms",
                     _verdict(added <= MAX_ADDED_P50_MS)))
    # At 16 connections: judged from the open loop; the closed loop's p50 there is queueing.
    conns = (run.get("open_loop") or {}).get("connections", 16)
    g, d = gateway.get(conns), direct.get(conns)
    closed = ""
    if g and d:
        closed = (f"closed loop: {g['p50_ms'] - d['p50_ms']:.3f} ms, which is queueing: about "
                  f"{_queueing_ms(g) or 0:.1f} ms at {g['rps']:,.0f} req/s")
    opened = _open_added(run)
    target = f"added p50 at {conns} conn <= {MAX_ADDED_P50_MS:g} ms"
    if opened:
        og, added, _ = opened
        rows.append((target, f"{added:.3f} ms in open loop at {og['rate']:,.0f} req/s"
                     + (f" ({closed})" if closed else ""), _verdict(added <= MAX_ADDED_P50_MS)))
    elif closed:
        rows.append((target, f"no open-loop run; {closed}", "not judged"))
    cpus = {c: _cpu_ms(r) for c, r in gateway.items() if r["cpu_ms_per_1k"]}
    if cpus:
        peak, split = _peak_split(load)
        at_peak = _cpu_ms(peak)
        floor = (f"; floor {split['floor_cpu_ms']:.3f} ms at {peak['connections']} conns, so the "
                 f"gateway's own work is {split['own_cpu_ms']:.3f} ms "
                 f"({_pct(split['own_share'])} of its CPU)") if split else ""
        rows.append((f"CPU per non-streamed call <= {MAX_CPU_MS_PER_CALL:g} ms",
                     f"{at_peak:.3f} ms at {peak['connections']} conns (peak "
                     f"{peak['rps']:,.0f} req/s); {min(cpus.values()):.3f}-"
                     f"{max(cpus.values()):.3f} over all levels{floor}",
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


def _budget_line(run: dict[str, Any]) -> list[str]:
    """What the CPU target leaves the gateway once the floor of its stack is paid."""
    load = run.get("load") or []
    if not _by(load, "gateway"):
        return []
    peak, split = _peak_split(load)
    if not split:
        return []
    left = MAX_CPU_MS_PER_CALL - split["floor_cpu_ms"]
    head = (f"With the floor at {split['floor_cpu_ms']:.3f} ms per call "
            f"({peak['connections']} conns, this run), ")
    if left <= 0:
        return ["", head + f"the stack alone is over the {MAX_CPU_MS_PER_CALL:g} ms target by "
                           f"{-left:.3f} ms; the gateway's own work is "
                           f"{split['own_cpu_ms']:.3f} ms."]
    return ["", head + f"the {MAX_CPU_MS_PER_CALL:g} ms target leaves {left:.3f} ms for "
                       f"everything the gateway itself does; it spends "
                       f"{split['own_cpu_ms']:.3f} ms."]


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
        lines += _budget_line(run)
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
