"""Operations: Prometheus text metrics, one structured log line per call, log levels."""

from __future__ import annotations

import json
import logging
import re
import sys

from gateway_app.logs import JsonFormatter, TextFormatter
from tests.fakes import chat_body, chunk, reply, sse_event, stream, throttle

USAGE = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2,
                                  "total_tokens": 6}}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, matched by name and a subset of labels."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def test_prometheus_counts_calls_tokens_latency_and_state(fake, start_gateway):
    first = fake().script(throttle("30"))
    second = fake(default=reply(200, chat_body(tokens=30)))
    gw = start_gateway([first, second])
    gw.lb()
    gw.lb()
    streamer = fake().script(stream([sse_event(chunk(0, "a")), sse_event(USAGE),
                                     b"data: [DONE]\n\n"]))
    gw.rewrite_config([streamer])
    gw.get("reconfig/test-gateway-key-6f1e")
    assert gw.lb({"messages": [], "stream": True}).status_code == 200
    r = gw.get("prometheus")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    ep0 = first.uri().split("?")[0]
    ep1 = second.uri().split("?")[0]
    ep2 = streamer.uri().split("?")[0]
    assert sample(text, "apirouter_backend_calls_total", endpoint=ep0, status_class="429") == 1
    assert sample(text, "apirouter_backend_calls_total", endpoint=ep1, status_class="2xx") == 2
    assert sample(text, "apirouter_cooldowns_total", endpoint=ep0, reason="throttled") == 1
    assert sample(text, "apirouter_tokens_total", endpoint=ep1, kind="prompt") == 40
    assert sample(text, "apirouter_tokens_total", endpoint=ep1, kind="completion") == 20
    assert sample(text, "apirouter_backend_latency_seconds_count", endpoint=ep1) == 2
    assert sample(text, "apirouter_time_to_first_token_seconds_count", endpoint=ep2) == 1
    assert sample(text, "apirouter_tokens_total", endpoint=ep2, kind="completion") == 2
    assert sample(text, "apirouter_client_calls_total", outcome="served") == 3
    assert sample(text, "apirouter_endpoint_available", endpoint=ep2, priority="0") == 1
    assert sample(text, "apirouter_endpoint_in_flight", endpoint=ep2) == 0


def test_one_json_line_per_call(fake, start_gateway, capsys):
    first = fake().script(throttle("30"))
    second = fake(default=reply(200, chat_body(tokens=12)))
    gw = start_gateway([first, second], env={"API_GATEWAY_LOG_FORMAT": "json",
                                             "API_GATEWAY_LOG_LEVEL": "info"})
    gw.lb(headers={"x-request-id": "req-42"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{")]
    calls = [e for e in lines if e["message"] == "call served"]
    assert len(calls) == 1
    call = calls[0]
    assert call["request_id"] == "req-42" and call["endpoint"] == 1
    assert call["pool"] == "/lb" and call["backend"] == f"127.0.0.1:{second.port}/dep"
    assert call["attempts"] == "0:429,1:200" and call["status"] == 200
    assert call["total_tokens"] == 12 and call["latency_ms"] > 0


def test_one_text_line_per_call(fake, start_gateway, capsys):
    gw = start_gateway([fake(default=reply(200, chat_body(tokens=12)))],
                       env={"API_GATEWAY_LOG_LEVEL": "info"})
    gw.lb(headers={"x-request-id": "req-43"})
    lines = [line for line in capsys.readouterr().err.splitlines() if "call served" in line]
    assert len(lines) == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO apirouter\.call call served "
        r"request_id=req-43 client=- pool=/lb backend=127\.0\.0\.1:\d+/dep endpoint=0 "
        r"attempts=0:200 status=200 latency_ms=[\d.]+ "
        r"prompt_tokens=\d+ completion_tokens=\d+ total_tokens=12", lines[0]), lines[0]


def test_call_lines_go_through_logging_when_someone_else_handles_them(fake, start_gateway,
                                                                        capsys):
    """A handler added to the call logger (an operator's own set-up) gets ordinary records."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    call_log = logging.getLogger("apirouter.call")
    gw = start_gateway([fake()], env={"API_GATEWAY_LOG_LEVEL": "info"})
    call_log.addHandler(handler)
    try:
        gw.lb(headers={"x-request-id": "req-44"})
    finally:
        call_log.removeHandler(handler)
    served = [r for r in records if r.getMessage() == "call served"]
    assert len(served) == 1 and served[0].fields["request_id"] == "req-44"
    assert "req-44" in capsys.readouterr().err  # our handler still writes it too


def test_warn_level_keeps_call_lines_out(fake, start_gateway, capsys):
    gw = start_gateway([fake()], env={"API_GATEWAY_LOG_LEVEL": "warn"})
    gw.lb()
    assert "call served" not in capsys.readouterr().err


def test_log_lines_keep_exceptions_and_fields():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("apirouter", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                   sys.exc_info())
    record.fields = {"request_id": "r-1"}
    text = TextFormatter().format(record)
    assert " ERROR apirouter failed x request_id=r-1\nTraceback" in text
    assert text.endswith("ValueError: boom")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error" and entry["message"] == "failed x"
    assert entry["request_id"] == "r-1" and entry["exception"].endswith("ValueError: boom")
