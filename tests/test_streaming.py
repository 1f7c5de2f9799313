"""Streamed calls relayed event by event through waitress, with failover before the first byte."""

from __future__ import annotations

import itertools
import json
import socket
import time

import pytest
import requests

from tests.fakes import DONE_EVENT, chunk, reply, sse_event, stream, wait_until

DONE = DONE_EVENT
USAGE = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
         "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                  "total_tokens": 8}}


def events(n: int = 3, usage_null: bool = False) -> list[bytes]:
    return [sse_event(chunk(i, f"t{i}", usage_null)) for i in range(n)]


def streamed(gw, payload=None, **kwargs) -> requests.Response:
    body = payload or {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    return gw.http.post(f"{gw.url}/lb", json=body, stream=True, timeout=30, **kwargs)


def read_events(response: requests.Response) -> list[tuple[float, str]]:
    """(arrival time, data) of every event, timed as it reaches the client."""
    out = []
    for line in response.iter_lines(chunk_size=1):
        if line.startswith(b"data: "):
            out.append((time.monotonic(), line[6:].decode()))
    return out


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
def test_each_event_reaches_the_client_as_the_backend_sends_it(fake, start_gateway, chunked):
    gap = 0.25
    backend = fake().script(stream([*events(5), DONE], gap=gap, chunked=chunked))
    gw = start_gateway([backend])
    started = time.monotonic()
    r = streamed(gw)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    got = read_events(r)
    assert [d for _, d in got][-1] == "[DONE]" and len(got) == 6
    arrivals = [t - started for t, _ in got]
    # held-back events would arrive together at the end; relayed ones arrive a gap apart
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > gap * 0.5, gaps
    assert arrivals[0] < arrivals[-1] - 4 * gap * 0.8


def test_failover_before_the_first_byte(fake, start_gateway):
    silent = fake().script(stream(events(2), first_delay=5))
    broken = fake().script(stream(events(2), break_after=0))
    good = fake().script(stream([*events(2), DONE]))
    gw = start_gateway([silent, broken, good], read_timeout=0.5)
    r = streamed(gw)
    assert r.headers["x-apirouter-endpoint"] == "2"
    assert [d for _, d in read_events(r)][-1] == "[DONE]"
    failed = [m["metrics"]["failedCalls"] for m in gw.metrics()["endpointMetrics"]]
    assert failed == [1, 1, 0]


def test_backend_breaking_mid_stream_ends_the_client_stream_cleanly(fake, start_gateway):
    backend = fake().script(stream([*events(4), DONE], break_after=2))
    spare = fake()
    gw = start_gateway([backend, spare])
    r = streamed(gw)
    data = [d for _, d in read_events(r)]  # returns: the client is not left hanging
    assert len(data) == 3
    assert json.loads(data[-1])["error"]["code"] == "StreamInterrupted"
    assert spare.calls == 0  # too late to fail over
    m = gw.metrics()["endpointMetrics"][0]["metrics"]
    assert (m["apiCalls"], m["failedCalls"]) == (0, 1)
    assert gw.lb().status_code == 200  # and the gateway goes on serving


def test_usage_is_asked_for_counted_and_hidden_from_a_client_that_did_not_ask(
        fake, start_gateway):
    backend = fake().script(stream([*events(3, usage_null=True), sse_event(USAGE), DONE]))
    gw = start_gateway([backend])
    r = streamed(gw)
    raw = r.content
    assert backend.received[0].json()["stream_options"] == {"include_usage": True}
    assert b"usage" not in raw
    assert raw.count(b"data: ") == 4 and raw.endswith(b"data: [DONE]\n\n")
    assert gw.metrics()["endpointMetrics"][0]["metrics"]["kInferenceTokens"] == 0.008


def test_usage_chunk_reaches_a_client_that_asked(fake, start_gateway):
    backend = fake().script(stream([*events(2, usage_null=True), sse_event(USAGE), DONE]))
    gw = start_gateway([backend])
    payload = {"messages": [], "stream": True, "stream_options": {"include_usage": True}}
    raw = streamed(gw, payload).content
    assert backend.received[0].body == json.dumps(payload).encode()  # sent as it came
    assert raw.count(b'"usage":null') == 2 and b'"total_tokens":8' in raw
    assert gw.metrics()["endpointMetrics"][0]["metrics"]["kInferenceTokens"] == 0.008


def test_old_api_versions_are_not_sent_stream_options(fake, start_gateway):
    backend = fake().script(stream([*events(2), DONE]))
    gw = start_gateway([{"uri": backend.uri(api_version="2024-02-01"), "apikey": "k"}])
    assert streamed(gw).status_code == 200
    assert "stream_options" not in backend.received[0].json()


def test_streamed_request_answered_with_an_error_is_relayed(fake, start_gateway):
    body = {"error": {"code": "content_filter", "message": "filtered"}}
    gw = start_gateway([fake().script(reply(400, body))])
    r = streamed(gw)
    assert (r.status_code, r.json()) == (400, body)


def test_client_hanging_up_releases_the_backend_and_the_thread(fake, start_gateway):
    backend = fake().script(stream(events(200), gap=0.05))
    gw = start_gateway([backend])
    sock = socket.create_connection(("127.0.0.1", int(gw.base.rsplit(":", 1)[1])))
    body = json.dumps({"messages": [], "stream": True}).encode()
    sock.sendall(f"POST {gw.url.split(':', 2)[2][5:]}/lb HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    assert b"200" in sock.recv(4096)
    sock.close()
    registry = gw.gateway.registry
    wait_until(lambda: registry.current.lb[0].backend.in_flight == 0, timeout=5)
    wait_until(backend.client_gone.is_set, timeout=5)  # the backend connection was closed
    assert gw.server.in_flight.count == 0
    m = gw.metrics()["endpointMetrics"][0]["metrics"]
    assert (m["apiCalls"], m["failedCalls"]) == (1, 0)  # not the backend's fault
