"""Streamed answers: server-sent events, sent one by one as the tokens are produced."""

from __future__ import annotations

import http.client
import itertools
import json
import statistics
import time

import pytest
import requests

PROMPT = [{"role": "user", "content": "stream me"}]


def read_events(response: requests.Response) -> list[tuple[float, str]]:
    """(arrival time, data) of each event, read as the bytes come in."""
    events = []
    for line in response.iter_lines(chunk_size=None):
        if line:
            assert line.startswith(b"data: ")
            events.append((time.monotonic(), line[len(b"data: "):].decode()))
    return events


def test_chat_stream_events_arrive_one_token_at_a_time(sim):
    ttft_ms, ms_per_token, tokens = 40, 60, 5
    s = sim({"ttft_ms": ttft_ms, "ms_per_token": ms_per_token})
    started = time.monotonic()
    r = s.post(body={"messages": PROMPT, "max_tokens": tokens, "stream": True}, stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked"
    assert "x-ratelimit-remaining-tokens" in r.headers
    events = read_events(r)

    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == tokens + 1  # one per token, then the one with finish_reason
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * tokens + ["length"]
    assert all("usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    whole = s.post(body={"messages": PROMPT, "max_tokens": tokens}).json()
    assert text == whole["choices"][0]["message"]["content"]

    # Timing: lower bounds only (sleeps guarantee them); the gaps show no buffering.
    token_times = [t for t, _ in events[:tokens]]
    assert token_times[0] - started >= ttft_ms / 1000
    assert token_times[-1] - started >= (ttft_ms + (tokens - 1) * ms_per_token) / 1000
    gaps = [b - a for a, b in itertools.pairwise(token_times)]
    assert statistics.median(gaps) >= 0.5 * ms_per_token / 1000


def test_usage_chunk_only_with_include_usage(sim):
    s = sim()
    body = {"messages": PROMPT, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    events = read_events(s.post(body=body, stream=True))
    assert events[-1][1] == "[DONE]"
    usage_chunk = json.loads(events[-2][1])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 3,
                                    "total_tokens": 6}
    others = [json.loads(data) for _, data in events[:-2]]
    assert all(c["usage"] is None and c["choices"] for c in others)

    body["stream_options"] = {"include_usage": False}
    plain = [json.loads(data) for _, data in read_events(s.post(body=body, stream=True))[:-1]]
    assert all(c["choices"] and "usage" not in c for c in plain)


def test_completions_stream(sim):
    s = sim()
    r = s.post("completions", {"prompt": "abc", "max_tokens": 4, "stream": True}, stream=True)
    events = read_events(r)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len("".join(c["choices"][0]["text"] for c in chunks).split()) == 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stream_options_without_stream_is_400(sim):
    r = sim().post(body={"messages": PROMPT, "stream_options": {"include_usage": True}})
    assert r.status_code == 400


def test_the_connection_is_kept_alive_after_a_stream(sim):
    s = sim()
    conn = http.client.HTTPConnection("127.0.0.1", s.server.port, timeout=5)
    body = json.dumps({"messages": PROMPT, "max_tokens": 2, "stream": True})
    sockets = []
    for _ in range(2):
        conn.request("POST", s.url().removeprefix(s.server.url), body=body,
                     headers={"api-key": "k1", "content-type": "application/json"})
        response = conn.getresponse()
        assert response.read().endswith(b"data: [DONE]\n\n")
        sockets.append(conn.sock)
    conn.close()
    assert sockets[0] is not None and sockets[0] is sockets[1]


def test_stop_ends_a_stream_in_progress(sim):
    s = sim({"ms_per_token": 10_000})
    r = s.post(body={"messages": PROMPT, "max_tokens": 50, "stream": True}, stream=True)
    lines = r.iter_lines(chunk_size=None)
    assert next(lines).startswith(b"data: ")
    s.server.stop()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for _ in lines:
            pass
