"""The configuration file: the original shape works, every mistake is named with its index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway_app.config import ConfigError, load_config, parse_config

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
    ({"endpoints": "all"}, "endpoints: Not a valid list"),
    ([1], "configuration: Invalid input type"),
    ({"endpoints": [], "extra": 1}, "extra: Unknown field"),
])
def test_invalid_configurations_name_field_and_index(doc, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    assert expected in str(info.value)


def test_missing_environment_key_is_named_not_shown(monkeypatch):
    doc = {"endpoints": [{"uri": URI, "apikey": "k"}, {"uri": URI, "apikeyEnv": "AOAI_KEY_1"}]}
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
