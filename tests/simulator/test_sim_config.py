"""Validation of the configuration file and of --deployment specs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from simulator.config import (
    DEPLOYMENT_FIELDS,
    ConfigError,
    DeploymentConfig,
    bundled_config_path,
    deployment_from_spec,
    load_config,
    parse_config,
)


def one(**fields):
    return {"deployments": [{"name": "d1", "apikey": "k1", **fields}]}


def test_minimal_deployment_gets_the_defaults():
    config = parse_config(one())
    [dep] = config.deployments
    assert dep == DeploymentConfig(name="d1", apikey="k1")
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert dep.effective_rpm == 6  # 6 per 1000 tpm


def test_field_table_and_dataclass_agree():
    defaults = {f.name: f.default for f in dataclasses.fields(DeploymentConfig)}
    for field in DEPLOYMENT_FIELDS:
        if not field.required:
            assert defaults[field.name] == field.default, field.name
    assert {f.name for f in DEPLOYMENT_FIELDS} == set(defaults)


@pytest.mark.parametrize(("data", "message"), [
    ({"deployments": []}, "deployments: must be a non-empty list"),
    ({"deployments": [{"name": "d1"}]}, 'deployments[0] ("d1").apikey: is required'),
    ({"deployments": [{"apikey": "k"}]}, "deployments[0].name: is required"),
    (one(tpm=0), 'deployments[0] ("d1").tpm: must be >= 1'),
    (one(tpm=True), 'deployments[0] ("d1").tpm: must be an integer'),
    (one(rpm="6"), 'deployments[0] ("d1").rpm: must be an integer or null'),
    (one(drop_rate=1.5), 'deployments[0] ("d1").drop_rate: must be >= 0.0 and <= 1.0'),
    (one(window_seconds=0), 'deployments[0] ("d1").window_seconds: must be > 0.0'),
    (one(tmp=5), "deployments[0] (\"d1\"): unknown field 'tmp'"),
    ({"deployments": [{"name": "a/b", "apikey": "k"}]},
     'deployments[0] ("a/b").name: must be letters'),
    ({**one(), "listen": 1}, "top level: unknown field 'listen'"),
    ({**one(), "port": 70000}, "port: must be >= 0 and <= 65535"),
])
def test_errors_name_the_place(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value)


def test_error_in_a_later_deployment_names_its_index():
    data = {"deployments": [{"name": "a", "apikey": "k"}, {"name": "b", "apikey": "k", "tpm": -5}]}
    with pytest.raises(ConfigError, match=r'deployments\[1\] \("b"\)\.tpm'):
        parse_config(data)


def test_duplicate_names_are_refused():
    data = {"deployments": [{"name": "a", "apikey": "k"}, {"name": "a", "apikey": "j"}]}
    with pytest.raises(ConfigError, match="duplicate deployment name"):
        parse_config(data)


def test_the_key_is_never_echoed():
    with pytest.raises(ConfigError) as info:
        parse_config({"deployments": [{"name": "a", "apikey": ["secret-value"]}]})
    assert "secret-value" not in str(info.value)


def test_comment_keys_are_ignored():
    config = parse_config({"_comment": "x", "deployments": [{"_note": 1, "name": "a",
                                                              "apikey": "k"}]})
    assert config.deployments[0].name == "a"


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON"):
        load_config(path)
    path.write_text(json.dumps(one(tpm=-1)))
    with pytest.raises(ConfigError, match=r'bad\.json: deployments\[0\] \("d1"\)\.tpm'):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_the_bundled_demo_configuration():
    config = load_config(bundled_config_path())
    names = [d.name for d in config.deployments]
    assert names == ["primary", "secondary", "tertiary"]
    assert [d.apikey for d in config.deployments] == [f"sim-key-{n}" for n in names]
    assert [d.tpm for d in config.deployments] == [600, 1200, 6000]


def test_deployment_spec():
    spec = deployment_from_spec("name=d1,apikey=123,tpm=600,rpm=null,ttft_ms=2.5,model=m")
    assert spec == {"name": "d1", "apikey": "123", "tpm": 600, "rpm": None, "ttft_ms": 2.5,
                    "model": "m"}
    with pytest.raises(ConfigError, match="key=value"):
        deployment_from_spec("name")


def test_provisioned_is_true_or_false_in_a_file_and_in_a_spec():
    assert parse_config(one(provisioned=True)).deployments[0].provisioned
    spec = deployment_from_spec("name=d1,apikey=k1,provisioned=true")
    assert parse_config({"deployments": [spec]}).deployments[0].provisioned
    with pytest.raises(ConfigError, match=r"provisioned: must be true or false, got 1"):
        parse_config(one(provisioned=1))
