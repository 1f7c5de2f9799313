"""Per-client limits and usage through a real gateway (waitress) in front of fake deployments."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from openai import AzureOpenAI, RateLimitError

from tests.fakes import DONE_EVENT, chunk, reply, sse_event, stream

API_VERSION = "2024-10-21"
KEY_A, KEY_B, KEY_ENV = "client-key-aaaa-1", "client-key-bbbb-2", "client-key-env-3"
CHAT = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 90}  # estimate 100


def clients(**limits_a: Any) -> dict[str, Any]:
    return {"clientKeys": [{"name": "app-a", "key": KEY_A, **limits_a},
                           {"name": "app-b", "key": KEY_B}]}


def pool(fake_backend) -> dict[str, Any]:
    return {"deployments": {"gpt-4o": {"backends": [
        {"endpoint": fake_backend.base, "deployment": "d", "apikey": "backend-key"}]}}}


def call(gw, key: str, payload: dict | None = None):
    return gw.lb(payload or CHAT, headers={"api-key": key})


def metrics(gw) -> dict[str, Any]:
    return gw.get("metrics", headers={"api-key": KEY_B}).json()


def test_a_client_over_its_tpm_gets_429_while_another_is_served(fake, start_gateway):
    backend = fake()
    gw = start_gateway([backend], sections=clients(tpm=250))
    # each estimated at 100 when admitted, settled to its real 30: 4 fit in 250
    assert [call(gw, KEY_A).status_code for _ in range(4)] == [200] * 4
    heavy = {**CHAT, "max_tokens": 190}  # estimated at 200: 120 + 200 > 250
    refused = call(gw, KEY_A, heavy)
    assert refused.status_code == 429
    body = refused.json()["error"]
    assert body["code"] == "ClientRateLimited"
    assert "client app-a: over its tpm of 250" in body["message"]
    assert KEY_A not in refused.text
    assert 0 < float(refused.headers["retry-after-ms"]) <= 60_000
    assert int(refused.headers["retry-after"]) == -(-int(refused.headers["retry-after-ms"])
                                                    // 1000)
    assert backend.calls == 4  # not forwarded
    assert call(gw, KEY_B, heavy).status_code == 200  # app-b has no limit
    m = metrics(gw)
    # the gateway's refusal is neither a backend failure nor an unserved call
    assert m["endpointMetrics"][0]["metrics"]["failedCalls"] == 0
    assert (m["successApiCalls"], m["failedApiCalls"]) == (5, 0)
    a = m["clientMetrics"]["app-a"]
    assert (a["calls"], a["rateLimitedCalls"], a["promptTokens"], a["completionTokens"]) == (
        4, 1, 80, 40)
    assert m["clientMetrics"]["app-b"]["calls"] == 1


def test_rpm_and_env_keys_get_client_defaults(fake, start_gateway):
    backend = fake()
    gw = start_gateway([backend], env={"API_GATEWAY_CLIENT_KEYS": KEY_ENV},
                       sections={**clients(rpm=5), "clientDefaults": {"rpm": 2}})
    assert [call(gw, KEY_ENV).status_code for _ in range(3)] == [200, 200, 429]
    assert [call(gw, KEY_A).status_code for _ in range(3)] == [200, 200, 200]
    assert [call(gw, KEY_B).status_code for _ in range(3)] == [200, 200, 429]  # defaults
    refused = call(gw, KEY_ENV)
    assert "client env-1: over its rpm of 2" in refused.json()["error"]["message"]


def test_the_sdk_retries_the_client_429_and_then_succeeds(fake, start_gateway):
    backend = fake()
    gw = start_gateway([], sections={**clients(tpm=150), **pool(backend)})
    gw.gateway.usage.window = 1.5  # a tpm window that frees in 1.5 s
    sdk = AzureOpenAI(azure_endpoint=gw.base, api_key=KEY_A, api_version=API_VERSION,
                      max_retries=0)
    sdk.chat.completions.create(model="gpt-4o", **CHAT)  # 100 estimated, settled to 30
    sdk.chat.completions.create(model="gpt-4o", **CHAT)  # 30 + 100 <= 150: settled to 60
    with pytest.raises(RateLimitError):  # 60 + 100 > 150
        sdk.chat.completions.create(model="gpt-4o", **CHAT)
    started = time.monotonic()
    retrying = sdk.with_options(max_retries=2)
    answer = retrying.chat.completions.create(model="gpt-4o", **CHAT)
    assert answer.usage.total_tokens == 30
    assert time.monotonic() - started >= 0.3  # it waited as told by retry-after-ms
    assert backend.calls == 3
    assert metrics(gw)["clientMetrics"]["app-a"]["rateLimitedCalls"] >= 2


def test_quota_answers_403_with_the_period_end(fake, start_gateway):
    backend = fake()
    gw = start_gateway([backend], sections=clients(tokenQuota=120, quotaPeriod="monthly"))
    assert call(gw, KEY_A).status_code == 200  # estimated at 100, settled to 30
    refused = call(gw, KEY_A)  # 30 + 100 > 120
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "ClientQuotaExceeded"
    assert "monthly tokenQuota of 120" in error["message"]
    end = refused.headers["x-quota-period-end"]
    assert end.endswith("T00:00:00.000+00:00") and end[8:10] == "01"
    assert int(refused.headers["retry-after"]) > 0
    assert backend.calls == 1
    from tests.test_openapi import Document, load_document

    Document(load_document()).check("POST", "/api/v1/{env}/apirouter/lb", refused)


def test_deployments_restrict_the_routes_a_client_may_use(fake, start_gateway):
    backend = fake()
    pools = pool(backend)
    pools["deployments"]["mini"] = {"backends": [
        {"endpoint": backend.base, "deployment": "m", "apikey": "backend-key"}]}
    gw = start_gateway([backend], sections={**clients(deployments=["gpt-4o"]), **pools})
    refused = call(gw, KEY_A)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "DeploymentNotAllowed"
    assert "may not use /lb" in refused.json()["error"]["message"]
    sdk = AzureOpenAI(azure_endpoint=gw.base, api_key=KEY_A, api_version=API_VERSION,
                      max_retries=0)
    assert sdk.chat.completions.create(model="gpt-4o", **CHAT).usage.total_tokens == 30
    assert call(gw, KEY_B).status_code == 200
    assert backend.calls == 2
    assert metrics(gw)["clientMetrics"]["app-a"]["refusedCalls"] == 1
    models = gw.http.get(f"{gw.base}/v1/models", headers={"api-key": KEY_A}).json()["data"]
    assert [m["id"] for m in models] == ["gpt-4o"]  # not mini
    models = gw.http.get(f"{gw.base}/v1/models", headers={"api-key": KEY_B}).json()["data"]
    assert [m["id"] for m in models] == ["gpt-4o", "mini"]


def test_streamed_usage_settles_the_count(fake, start_gateway):
    usage_event = sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1,
                             "model": "gpt-4o", "choices": [],
                             "usage": {"prompt_tokens": 11, "completion_tokens": 2,
                                       "total_tokens": 13}})
    backend = fake().script(stream([sse_event(chunk(0, "Hel")), sse_event(chunk(1, "lo")),
                                    usage_event, DONE_EVENT]))
    gw = start_gateway([], sections={**clients(tpm=1000), **pool(backend)})
    sdk = AzureOpenAI(azure_endpoint=gw.base, api_key=KEY_A, api_version=API_VERSION,
                      max_retries=0)
    parts = sdk.chat.completions.create(model="gpt-4o", stream=True, **CHAT)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == "Hello"
    usage = gw.gateway.usage
    deadline = time.monotonic() + 5
    while usage.counted("app-a")[0] != 13 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert usage.counted("app-a") == (13, 1, 0)  # the estimate of 100 became 13
    a = metrics(gw)["clientMetrics"]["app-a"]
    assert (a["promptTokens"], a["completionTokens"]) == (11, 2)


def test_a_reload_changes_limits_and_keeps_usage(fake, start_gateway):
    backend = fake()
    gw = start_gateway([backend], sections=clients(rpm=10))
    assert [call(gw, KEY_A).status_code for _ in range(3)] == [200, 200, 200]
    doc = json.loads(gw.config_file.read_text())
    doc["clientKeys"][0]["rpm"] = 4
    gw.config_file.write_text(json.dumps(doc))
    gw.gateway.reload()
    assert [call(gw, KEY_A).status_code for _ in range(2)] == [200, 429]


def test_an_unserved_call_gives_its_tokens_back(fake, start_gateway):
    backend = fake(default=reply(503, {"error": {"code": "x", "message": "down"}}))
    gw = start_gateway([backend], sections=clients(tpm=150))
    assert call(gw, KEY_A).status_code == 503
    assert gw.gateway.usage.counted("app-a") == (0, 1, 0)  # the request counts, no tokens


def test_without_client_keys_the_metrics_keep_their_shape(fake, start_gateway):
    gw = start_gateway([fake()])
    assert gw.lb().status_code == 200
    assert "clientMetrics" not in gw.metrics()


def test_usage_by_client_everywhere_equals_what_was_served(fake, start_gateway, tmp_path,
                                                           capsys):
    """/metrics, /prometheus, the history file, /capacity and the chargeback CSV all show
    what the deployment served to each client, by name, and no key anywhere."""
    from gateway_app.capacity.report import main as capacity_main
    from tests.test_openapi import Document, load_document

    history = tmp_path / "history.jsonl"
    backend = fake(default=reply(200, {**_chat(prompt=20, completion=10)}))
    gw = start_gateway([backend], env={"API_GATEWAY_METRICS_HISTORY_FILE": str(history)},
                       sections=clients(rpm=3))
    for _ in range(3):
        assert call(gw, KEY_A).status_code == 200
    limited = call(gw, KEY_A)
    assert limited.status_code == 429
    assert call(gw, KEY_B).status_code == 200
    document = Document(load_document())
    document.check("POST", "/api/v1/{env}/apirouter/lb", limited)
    gw.gateway.collector._close()  # close the interval now, as the collector thread does

    shown = metrics(gw)["clientMetrics"]
    closed_a = shown["app-a"]["history"]["0"]["collectedMetrics"]
    assert closed_a == {"calls": 3, "rateLimitedCalls": 1, "refusedCalls": 0,
                        "promptTokens": 60, "completionTokens": 30, "totalTokens": 90}
    assert shown["app-b"]["history"]["0"]["collectedMetrics"]["totalTokens"] == 30
    assert backend.calls == 4
    document.check("GET", "/api/v1/{env}/apirouter/metrics",
                   gw.get("metrics", headers={"api-key": KEY_B}))

    prometheus = gw.get("prometheus", headers={"api-key": KEY_B}).text
    assert 'apirouter_client_requests_total{client="app-a",outcome="admitted"} 3.0' in prometheus
    assert ('apirouter_client_requests_total{client="app-a",outcome="rate_limited"} 1.0'
            in prometheus)
    assert 'apirouter_client_tokens_total{client="app-a",kind="prompt"} 60.0' in prometheus
    assert 'apirouter_client_tokens_total{client="app-b",kind="completion"} 10.0' in prometheus

    lines = [json.loads(line) for line in history.read_text().splitlines()]
    client_lines = {line["client"]: line for line in lines if "client" in line}
    assert client_lines["app-a"]["collectedMetrics"] == closed_a

    capacity = gw.get("capacity", headers={"api-key": KEY_B})
    document.check("GET", "/api/v1/{env}/apirouter/capacity", capacity)
    rows = {row["client"]: row for row in capacity.json()["clients"]}
    assert (rows["app-a"]["totalTokens"], rows["app-a"]["tokenShare"]) == (90, 0.75)
    assert (rows["app-b"]["totalTokens"], rows["app-b"]["tokenShare"]) == (30, 0.25)

    out = tmp_path / "chargeback.csv"
    assert capacity_main(["--history", str(history), "--clients-csv", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Usage by client:" in table and "app-a" in table
    csv_lines = out.read_text().splitlines()
    assert csv_lines[0] == ("client,calls,rateLimitedCalls,refusedCalls,promptTokens,"
                            "completionTokens,totalTokens,tokenShare,from,to,intervals")
    assert csv_lines[1].startswith("app-a,3,1,0,60,30,90,0.75,")
    assert csv_lines[2].startswith("app-b,1,0,0,20,10,30,0.25,")

    for text in (json.dumps(shown), prometheus, history.read_text(), capacity.text, table,
                 out.read_text(), limited.text):
        assert KEY_A not in text and KEY_B not in text


def _chat(prompt: int, completion: int) -> dict[str, Any]:
    from tests.fakes import chat_body

    body = chat_body()
    body["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}
    return body
