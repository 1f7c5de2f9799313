"""Routes, checks and answer shapes of the simulator, over real HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import math
import struct

import requests

CHAT = {"messages": [{"role": "system", "content": "x" * 20},
                     {"role": "user", "content": "y" * 20}], "max_tokens": 5}


def test_healthz_lists_the_deployments(sim):
    s = sim({}, {"name": "d2", "apikey": "k2"})
    r = requests.get(f"{s.server.url}/healthz", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"status": "OK", "deployments": ["d1", "d2"]}


def test_missing_or_wrong_key_is_401(sim):
    s = sim()
    for key in (None, "wrong"):
        r = s.post(key=key)
        assert r.status_code == 401
        error = r.json()["error"]
        assert error["code"] == "401"
        assert error["message"].startswith("Access denied due to invalid subscription key")
        assert "k1" not in r.text


def test_a_key_of_another_deployment_is_refused(sim):
    s = sim({}, {"name": "d2", "apikey": "k2"})
    assert s.post(name="d2", key="k1").status_code == 401
    assert s.post(name="d2", key="k2").status_code == 200


def test_unknown_deployment_is_404(sim):
    r = sim().post(name="nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "DeploymentNotFound"


def test_missing_api_version_is_400(sim):
    r = sim().post(api_version=None)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "MissingApiVersionParameter"


def test_unknown_path_is_404_json(sim):
    s = sim()
    r = s.session.post(f"{s.server.url}/openai/deployments/d1/images?api-version=1", timeout=5)
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_bad_bodies_are_400(sim):
    s = sim()
    r = s.session.post(s.url(), data=b"{not json", headers={"api-key": "k1"}, timeout=5)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "BadRequest"
    assert s.post(body={"max_tokens": 3}).status_code == 400  # no messages
    assert s.post(body={**CHAT, "max_tokens": 0}).status_code == 400
    assert s.post("embeddings", {"input": []}).status_code == 400
    # The connection stays usable after errors: the body was read in full.
    assert s.post(body=CHAT).status_code == 200


def test_chat_completion_shape_and_usage(sim):
    r = sim({"model": "gpt-4o-mini"}).post(body=CHAT)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 5  # one word per token
    assert choice["finish_reason"] == "length"  # max_tokens cut it
    # 40 characters of content / 4 = 10 prompt tokens; 5 completion tokens
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_same_prompt_same_answer_and_default_max_tokens(sim):
    s = sim({"default_max_tokens": 7})
    first, second = (s.post().json() for _ in range(2))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["usage"]["completion_tokens"] == 7
    assert first["choices"][0]["finish_reason"] == "stop"


def test_text_completion_shape(sim):
    r = sim().post("completions", {"prompt": ["abcd", "efgh"], "max_tokens": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert len(choice["text"].split()) == 3
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_embeddings_shape(sim):
    r = sim({"embedding_dimensions": 16}).post("embeddings", {"input": ["hello", "hello", "bye"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 16 for v in vectors)
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, rel_tol=1e-4)
    assert vectors[0] == vectors[1] != vectors[2]
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_embeddings_dimensions_and_base64(sim):
    r = sim().post("embeddings", {"input": "hello", "dimensions": 4, "encoding_format": "base64"})
    assert r.status_code == 200
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(struct.unpack("<4f", raw)) == 4


def test_every_deployment_answer_has_ratelimit_headers(sim):
    s = sim({"tpm": 1000, "rpm": 10})
    ok = s.post(body=CHAT)
    assert ok.headers["x-ratelimit-remaining-requests"] == "9"
    assert ok.headers["x-ratelimit-remaining-tokens"] == str(1000 - 15)
    refused = s.post(key="wrong")
    assert refused.headers["x-ratelimit-remaining-requests"] == "9"


def test_a_provisioned_deployment_states_its_utilization_instead(sim):
    s = sim({"tpm": 1000, "rpm": 10, "provisioned": True})
    ok = s.post(body=CHAT)  # 10 prompt tokens + 5: 15 of 1000 in use
    assert ok.headers["azure-openai-deployment-utilization"] == "1.5%"
    assert "x-ratelimit-remaining-tokens" not in ok.headers
    assert "x-ratelimit-remaining-requests" not in ok.headers
    big = s.post(body={**CHAT, "max_tokens": 975})  # 985 more: 1000 of 1000
    assert big.headers["azure-openai-deployment-utilization"] == "100.0%"
    refused = s.post(body=CHAT)
    assert refused.status_code == 429
    assert refused.headers["azure-openai-deployment-utilization"] == "100.0%"
    assert s.post(key="wrong").headers["azure-openai-deployment-utilization"] == "100.0%"


def test_a_body_over_the_limit_is_413_and_the_connection_closed(sim):
    s = sim()
    conn = http.client.HTTPConnection("127.0.0.1", s.server.port, timeout=5)
    conn.putrequest("POST", s.url().removeprefix(s.server.url))
    conn.putheader("api-key", "k1")
    conn.putheader("Content-Length", str(64 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert response.getheader("connection") == "close"
    assert json.loads(response.read())["error"]["code"] == "413"
    conn.close()
