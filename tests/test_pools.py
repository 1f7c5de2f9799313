"""Azure-style and /v1 routes over deployment pools, proven with the official openai package."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from openai import AzureOpenAI, OpenAI

from tests.fakes import DONE_EVENT, chunk, reply, sse_event, stream, throttle

API_VERSION = "2024-10-21"
EMBEDDING = {"object": "list", "model": "text-embedding-3-small",
             "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
             "usage": {"prompt_tokens": 3, "total_tokens": 3}}


def backend(fake_backend, deployment: str, key: str, **extra) -> dict:
    return {"endpoint": fake_backend.base, "deployment": deployment, "apikey": key, **extra}


def pools(**named: list[dict]) -> dict:
    return {"deployments": {name: {"backends": backends} for name, backends in named.items()}}


def azure(gw, retries: int = 0) -> AzureOpenAI:
    return AzureOpenAI(azure_endpoint=gw.base, api_key="unused-client-key",
                       api_version=API_VERSION, max_retries=retries)


def test_azure_sdk_chat_goes_to_the_pool_backend(fake, start_gateway):
    east = fake()
    gw = start_gateway([], sections=pools(**{"gpt-4o": [backend(east, "gpt4o-east", "k-east")]}))
    answer = azure(gw).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello!"
    assert answer.usage.total_tokens == 30
    sent = east.received[0]
    assert sent.path == f"/openai/deployments/gpt4o-east/chat/completions?api-version={API_VERSION}"
    assert sent.headers["api-key"] == "k-east"


def test_azure_sdk_streams_a_chat(fake, start_gateway):
    east = fake().script(stream([sse_event(chunk(0, "Hel")), sse_event(chunk(1, "lo")),
                                 DONE_EVENT], gap=0.05))
    gw = start_gateway([], sections=pools(**{"gpt-4o": [backend(east, "d", "k")]}))
    parts = azure(gw).chat.completions.create(model="gpt-4o", stream=True, messages=[])
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == "Hello"


def test_azure_sdk_embeddings(fake, start_gateway):
    emb = fake(default=reply(200, EMBEDDING))
    gw = start_gateway([], sections=pools(**{"embed": [backend(emb, "te3", "k")]}))
    result = azure(gw).embeddings.create(model="embed", input="hello")
    assert result.data[0].embedding == [0.1, 0.2, 0.3]
    assert emb.received[0].path.startswith("/openai/deployments/te3/embeddings?")
    m = gw.metrics()["deploymentMetrics"]["embed"][0]["metrics"]
    assert (m["apiCalls"], m["kInferenceTokens"]) == (1, 0.003)


def test_sdk_retries_the_gateways_429_after_retry_after(fake, start_gateway):
    only = fake().script(throttle(retry_after="1"))
    gw = start_gateway([], sections=pools(**{"gpt-4o": [backend(only, "d", "k")]}))
    started = time.monotonic()
    answer = azure(gw, retries=2).chat.completions.create(model="gpt-4o", messages=[])
    elapsed = time.monotonic() - started
    assert answer.choices[0].message.content == "Hello!"
    assert only.calls == 2  # the throttled call, then the retry after the cooldown
    assert elapsed >= 0.9  # the SDK waited as told


def test_openai_v1_chat_with_model_naming_the_pool(fake, start_gateway):
    east = fake()
    gw = start_gateway([], sections={"deployments": {"gpt-4o-mini": {
        "backends": [backend(east, "mini", "k")], "apiVersion": "2024-06-01"}}})
    client = OpenAI(base_url=f"{gw.base}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert answer.usage.total_tokens == 30
    assert east.received[0].path == (
        "/openai/deployments/mini/chat/completions?api-version=2024-06-01")
    assert "authorization" not in east.received[0].headers
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]


def test_failover_across_priorities_within_a_pool(fake, start_gateway):
    first, second = fake().script(throttle("30")), fake()
    gw = start_gateway([], sections=pools(p=[backend(first, "a", "k1", priority=0),
                                             backend(second, "b", "k2", priority=1)]))
    for _ in range(3):
        r = gw.http.post(f"{gw.base}/openai/deployments/p/chat/completions?api-version=x",
                         json={"messages": []}, timeout=10)
        assert r.status_code == 200
    assert (first.calls, second.calls) == (1, 3)
    metrics = gw.metrics()["deploymentMetrics"]["p"]
    assert [m["metrics"]["failedCalls"] for m in metrics] == [1, 0]


def test_weights_spread_calls_within_a_priority(fake, start_gateway):
    heavy, light = fake(), fake()
    gw = start_gateway([], sections=pools(p=[backend(heavy, "h", "k1", priority=0, weight=3),
                                             backend(light, "l", "k2", priority=0, weight=1)]))
    for _ in range(400):
        gw.http.post(f"{gw.base}/openai/deployments/p/embeddings?api-version=x",
                     json={"input": "x"}, timeout=10)
    assert heavy.calls + light.calls == 400
    assert 2.0 < heavy.calls / light.calls < 4.5


def test_other_operations_and_bodies_pass_through(fake, start_gateway):
    audio = fake(default=reply(200, {"text": "hello"}))
    gw = start_gateway([], sections=pools(whisper=[backend(audio, "wh", "k")]))
    r = gw.http.post(f"{gw.base}/openai/deployments/whisper/audio/transcriptions"
                     "?api-version=2024-06-01", files={"file": ("a.wav", b"RIFF....")},
                     timeout=10)
    assert r.json() == {"text": "hello"}
    sent = audio.received[0]
    assert sent.path == "/openai/deployments/wh/audio/transcriptions?api-version=2024-06-01"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b"RIFF...." in sent.body


@pytest.mark.parametrize("path, body, code", [
    ("/openai/deployments/nope/chat/completions?api-version=x", {"messages": []},
     "DeploymentNotFound"),
    ("/v1/chat/completions", {"model": "nope", "messages": []}, "DeploymentNotFound"),
    ("/v1/chat/completions", {"messages": []}, "InvalidRequest"),
    ("/v1/assistants", {}, "NotFound"),
])
def test_unknown_pools_and_operations_are_json_errors(fake, start_gateway, path, body, code):
    gw = start_gateway([fake()], sections=pools(p=[backend(fake(), "d", "k")]))
    r = gw.http.post(f"{gw.base}{path}", json=body, timeout=10)
    assert r.status_code in (400, 404)
    assert r.json()["error"]["code"] == code


def test_lb_and_pools_side_by_side_and_shown(fake, start_gateway):
    lb, pooled = fake(), fake()
    gw = start_gateway([lb], sections=pools(p=[backend(pooled, "d", "k", weight=2)]))
    assert gw.lb().status_code == 200
    info = gw.get("instanceinfo").json()
    assert info["oaiEndpoints"] == {"0": lb.uri()}
    assert info["deployments"] == {"p": [{"endpoint": f"{pooled.base}/openai/deployments/d",
                                          "priority": 0, "weight": 2.0}]}
    assert set(gw.metrics()["deploymentMetrics"]) == {"p"}
    current = gw.gateway.current
    assert Counter(e.pool for e in current.entries()) == {"/lb": 1, "p": 1}


def test_a_deployment_in_lb_and_in_a_pool_has_one_cooldown(fake, start_gateway):
    """A 429 seen through /lb benches that deployment for the SDK routes too."""
    east = fake().script(throttle("30"))
    west = fake()
    gw = start_gateway([east.uri("d"), west.uri("d")],
                       sections=pools(p=[backend(east, "d", "k1"), backend(west, "d", "k2")]))
    assert gw.lb().headers["x-apirouter-attempts"] == "2"
    r = gw.http.post(f"{gw.base}/openai/deployments/p/chat/completions?api-version=x",
                     json={"messages": []}, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-apirouter-attempts"] == "1"  # east was skipped, not asked again
    assert east.calls == 1 and west.calls == 2
    states = {(s["pool"], s["endpoint"]): s for s in gw.get("readyz").json()["endpoints"]}
    assert states["/lb", east.uri("d")]["reason"] == "throttled"
    assert states["p", f"{east.base}/openai/deployments/d"]["reason"] == "throttled"


def test_lb_without_endpoints_names_the_pool_routes(fake, start_gateway):
    gw = start_gateway([], sections=pools(**{"gpt-4o": [backend(fake(), "d", "k")]}))
    r = gw.lb()
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "NoEndpointsConfigured"
    assert "gpt-4o" in error["message"] and "/openai/deployments/" in error["message"]
