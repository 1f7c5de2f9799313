"""Answers from a deployment are bounded in size and time, and never mislabelled (issue 17)."""

from __future__ import annotations

import gzip
import json
import time

from tests.fakes import DONE_EVENT, chat_body, reply, sse_event, stream

MIB = 1024 * 1024
LIMITS = {"API_GATEWAY_MAX_RESPONSE_BYTES": str(MIB), "API_GATEWAY_CALL_TIMEOUT": "1"}


def endless(content_type: str = "application/json", piece: bytes = b"x" * 65536,
            gap: float = 0.0, total: int = 8 * MIB, length: int | None = None):
    """Send ``total`` bytes in ``piece``s, ``gap`` seconds apart, without Content-Length
    (delimited by closing the connection) unless ``length`` is given."""
    def act(h) -> None:
        h.send_response(200)
        h.send_header("content-type", content_type)
        if length is None:
            h.send_header("connection", "close")
            h.close_connection = True
        else:
            h.send_header("content-length", str(length))
        h.end_headers()
        sent = 0
        try:
            while sent < total and not h.fake.stopping.is_set():
                h.wfile.write(piece)
                h.wfile.flush()
                sent += len(piece)
                if gap:
                    h.fake.stopping.wait(gap)
        except OSError:
            h.fake.client_gone.set()
    return act


def test_an_answer_over_the_limit_is_a_json_502_and_counts_as_failed(fake, start_gateway):
    huge = fake(default=endless())
    spare = fake()
    gw = start_gateway([huge, spare], env=LIMITS)
    r = gw.lb()
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "ResponseTooLarge"
    assert spare.calls == 0  # another deployment would send the same answer
    m = gw.metrics()
    assert m["endpointMetrics"][0]["metrics"]["failedCalls"] == 1
    assert m["failedApiCalls"] == 1 and m["successApiCalls"] == 0


def test_a_content_length_over_the_limit_is_refused_before_reading(fake, start_gateway):
    gw = start_gateway([fake(default=endless(length=4 * MIB, total=4 * MIB))], env=LIMITS)
    r = gw.lb()
    assert r.status_code == 502 and r.json()["error"]["code"] == "ResponseTooLarge"


def test_a_trickling_answer_hits_the_call_deadline_and_fails_over(fake, start_gateway):
    slow = fake(default=endless(piece=b" ", gap=0.1, total=10_000))
    spare = fake()
    gw = start_gateway([slow, spare], env=LIMITS)
    started = time.monotonic()
    r = gw.lb()
    assert r.status_code == 200 and r.headers["x-apirouter-attempts"] == "2"
    assert time.monotonic() - started < 5  # the deadline is 1 s; the trickle would take 1,000
    assert spare.calls == 1


def test_a_stream_without_event_boundaries_is_cut_at_the_limit(fake, start_gateway):
    gw = start_gateway([fake(default=endless("text/event-stream"))], env=LIMITS)
    r = gw.lb({"messages": [], "stream": True})
    assert r.status_code == 200  # headers were relayed before the backend misbehaved
    assert b"StreamInterrupted" in r.content
    assert len(r.content) < MIB
    m = gw.metrics()["endpointMetrics"][0]["metrics"]
    assert m["failedCalls"] == 1


def test_a_stream_past_the_call_deadline_ends_with_an_error_event(fake, start_gateway):
    events = [sse_event({"choices": [{"delta": {"content": "x"}}]})] * 40 + [DONE_EVENT]
    gw = start_gateway([fake(default=stream(events, gap=0.1))], env=LIMITS)
    r = gw.lb({"messages": [], "stream": True})
    assert b"StreamInterrupted" in r.content
    assert DONE_EVENT not in r.content


def test_a_gzip_answer_is_decoded_and_counted(fake, start_gateway):
    body = gzip.compress(json.dumps(chat_body(tokens=42)).encode())
    gw = start_gateway([fake(default=reply(200, body, {"content-encoding": "gzip"}))])
    r = gw.http.post(f"{gw.url}/lb", json={"messages": []}, timeout=10,
                     headers={"accept-encoding": "identity"}, stream=True)
    assert "content-encoding" not in r.headers
    assert json.loads(r.raw.read())["usage"]["total_tokens"] == 42
    assert gw.metrics()["endpointMetrics"][0]["metrics"]["kInferenceTokens"] == 0.042


def test_an_encoding_the_gateway_cannot_decode_keeps_its_header(fake, start_gateway):
    body = b"\x0b\x02\x80{}\x03"  # brotli-ish bytes: relayed as they are, labelled
    gw = start_gateway([fake(default=reply(200, body, {"content-encoding": "br"}))])
    r = gw.http.post(f"{gw.url}/lb", json={"messages": []}, timeout=10, stream=True)
    assert r.headers["content-encoding"] == "br"
    assert r.raw.read(decode_content=False) == body
