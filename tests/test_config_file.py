"""The configuration file: the original shape works, every mistake is named with its index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway_app.config import MAX_BACKENDS, ConfigError, load_config, parse_config

URI = "https://res.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21"


def test_the_original_file_works_unchanged():
    endpoints = load_config("api-router-config.json").endpoints
    assert [e.priority for e in endpoints] == [0, 1, 2]
    assert endpoints[0].uri.startswith("http://127.0.0.1:8080/openai/deployments/primary")


def test_key_from_environment_variable_stays_out_of_the_file():
    doc = {"endpoints": [{"uri": URI, "apikeyEnv": "AOAI_KEY_0"}]}
    [endpoint] = parse_config(doc, {"AOAI_KEY_0": "from-env"}).endpoints
    assert endpoint.api_key == "from-env"
    assert "from-env" not in repr(endpoint)


@pytest.mark.parametrize("doc, expected", [
    ({"endpoints": []}, "endpoints: must list at least one endpoint"),
    ({}, "endpoints: Missing data for required field"),
    ({"endpoints": [{"apikey": "k"}]}, "endpoints[0].uri: Missing data for required field"),
    ({"endpoints": [{"uri": URI, "apikey": "k"}, {"uri": "ftp://x/y", "apikey": "k"}]},
     "endpoints[1].uri: Not a valid URL"),
    ({"endpoints": [{"uri": URI, "apikey": "k", "colour": "blue"}]},
     "endpoints[0].colour: Unknown field"),
    ({"endpoints": [{"uri": URI}]}, "endpoints[0].apikey: give exactly one of apikey and"),
    ({"endpoints": [{"uri": URI, "apikey": "k", "apikeyEnv": "X"}]},
     "endpoints[0].apikey: give exactly one"),
    ({"endpoints": [{"uri": URI, "apikeyEnv": "NOT SET"}]},
     "endpoints[0].apikeyEnv: must be an environment variable name"),
    ({"endpoints": [{"uri": URI, "apikey": "k", "priority": -1}]}, "endpoints[0].priority"),
    ({"endpoints": [{"uri": URI, "apikey": "k", "timeout": 0}]}, "endpoints[0].timeout"),
    ({"endpoints": [{"uri": URI, "apikey": "k", "timeout": 1e308}]},
     "endpoints[0].timeout: Must be greater than 0 and less than or equal to 3600"),
    ({"deployments": {"p": {"backends": [{"endpoint": "https://res.openai.azure.com",
                                          "deployment": "d", "apikey": "k", "weight": 1e308}]}}},
     "deployments.p.backends[0].weight: Must be greater than 0 and less than or equal to"),
    ({"endpoints": "all"}, "endpoints: Not a valid list"),
    ([1], "configuration: Invalid input type"),
    ({"endpoints": [], "extra": 1}, "extra: Unknown field"),
])
def test_invalid_configurations_name_field_and_index(doc, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    assert expected in str(info.value)


def test_missing_environment_key_is_named_not_shown(monkeypatch):
    doc = {"endpoints": [{"uri": URI, "apikey": "k"},
                         {"uri": URI.replace("gpt", "mini"), "apikeyEnv": "AOAI_KEY_1"}]}
    with pytest.raises(ConfigError, match=r"endpoints\[1\].apikeyEnv: .*AOAI_KEY_1 is not set"):
        parse_config(doc, {})


def test_bad_json_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"endpoints": [ {"uri": "x", } ]}')
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON: .*line 1 column"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(str(tmp_path / "absent.json"))


def test_errors_never_echo_keys():
    doc = {"endpoints": [{"uri": "not a url", "apikey": "sk-very-secret", "x": 1}]}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    assert "sk-very-secret" not in str(info.value)


def test_sample_file_is_valid_json_with_three_simulated_deployments():
    doc = json.loads(Path("api-router-config.json").read_text())
    assert len(doc["endpoints"]) == 3


def pool_backend(endpoint: str = "https://res.openai.azure.com", deployment: str = "gpt",
                 **extra: object) -> dict[str, object]:
    return {"endpoint": endpoint, "deployment": deployment, "apikey": "k", **extra}


@pytest.mark.parametrize("doc, expected", [
    ({"endpoints": [{"uri": URI, "apikey": "k"}, {"uri": URI + "x", "apikey": "k"},
                    {"uri": URI, "apikey": "other"}]},
     "endpoints[2].uri: same as endpoints[0].uri"),
    ({"endpoints": [{"uri": URI, "apikey": "k"},
                    {"uri": URI.replace("https://res.", "HTTPS://RES."), "apikeyEnv": "K"}]},
     "endpoints[1].uri: same as endpoints[0].uri"),
    ({"deployments": {"chat": {"backends": [pool_backend(), pool_backend(deployment="mini"),
                                            pool_backend(endpoint="https://RES.openai.azure.com/",
                                                         priority=3)]}}},
     "deployments.chat.backends[2]: same endpoint and deployment as deployments.chat.backends[0]"),
])
def test_a_deployment_listed_twice_is_refused_naming_both_indexes(doc, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {"K": "from-env"})
    assert expected in str(info.value)


def test_the_same_deployment_in_two_lists_is_allowed():
    """/lb's list and each pool are separate lists; a deployment may serve several."""
    doc = {"endpoints": [{"uri": "https://res.openai.azure.com/openai/deployments/gpt"
                                 "/chat/completions?api-version=2024-10-21", "apikey": "k"}],
           "deployments": {"a": {"backends": [pool_backend()]},
                           "b": {"backends": [pool_backend(), pool_backend(deployment="x")]}}}
    config = parse_config(doc, {})
    assert [len(pool.backends) for pool in config.pools.values()] == [1, 2]


def test_lists_are_bounded_and_errors_are_counted_past_twenty():
    many = [{"uri": f"{URI}&n={i}", "apikey": "k"} for i in range(MAX_BACKENDS)]
    assert len(parse_config({"endpoints": many}, {}).endpoints) == MAX_BACKENDS
    with pytest.raises(ConfigError, match=r"^endpoints: at most 1000 endpoints"):
        parse_config({"endpoints": [*many, {"uri": URI, "apikey": "k"}]}, {})
    backends = [pool_backend(deployment=f"d{i}") for i in range(MAX_BACKENDS + 1)]
    with pytest.raises(ConfigError, match=r"deployments.p.backends: at most 1000 backends"):
        parse_config({"deployments": {"p": {"backends": backends}}}, {})
    pools = {f"p{i}": {"backends": [pool_backend()]} for i in range(1001)}
    with pytest.raises(ConfigError, match=r"^deployments: at most 1000 pools"):
        parse_config({"deployments": pools}, {})
    bad = [{"uri": "not a url", "apikey": "k"} for _ in range(500)]
    with pytest.raises(ConfigError) as info:
        parse_config({"endpoints": bad}, {})
    assert str(info.value).count("Not a valid URL") == 20
    assert str(info.value).endswith("; and 480 more")


@pytest.mark.parametrize("depth", [65, 100_000])
def test_a_deeply_nested_file_is_refused_with_a_clear_message(tmp_path, depth):
    deep = tmp_path / "deep.json"
    deep.write_text('{"endpoints": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}")
    with pytest.raises(ConfigError, match=r"deep.json nests arrays or objects more than 64 "):
        load_config(str(deep))


def test_a_file_at_the_nesting_bound_gets_the_schema_errors(tmp_path):
    at_bound = tmp_path / "c.json"
    at_bound.write_text('{"endpoints": ' + "[" * 63 + "]" * 63 + "}")
    with pytest.raises(ConfigError, match=r"endpoints\[0\]: Invalid input type"):
        load_config(str(at_bound))
    at_bound.write_text("null")
    with pytest.raises(ConfigError, match="configuration: Invalid input type"):
        load_config(str(at_bound))
