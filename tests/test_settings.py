"""Settings from the environment: required variables, checked values, clear start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway_app.settings import Settings, SettingsError
from tests.conftest import base_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path):
    return base_env(ROOT / "api-router-config.json")


def test_defaults_apply(env):
    s = Settings.from_env(env)
    assert (s.port, s.host, s.log_level, s.threads) == (8000, "0.0.0.0", "warn", 512)
    assert s.route_prefix == "/api/v1/test/apirouter"
    assert s.metrics_interval_seconds == 3600
    assert "test-gateway-key" not in repr(s)


def test_failover_bounds_keep_ordinary_lists_as_the_original(env):
    """Every endpoint of a list of a few is tried, with minutes to do it."""
    s = Settings.from_env(env)
    assert (s.max_attempts, s.failover_timeout) == (10, 300.0)
    s = Settings.from_env({**env, "API_GATEWAY_MAX_ATTEMPTS": "3",
                           "API_GATEWAY_FAILOVER_TIMEOUT": "2.5"})
    assert (s.max_attempts, s.failover_timeout) == (3, 2.5)


def test_fractional_interval_and_original_log_spellings(env):
    s = Settings.from_env({**env, "API_GATEWAY_METRICS_CINTERVAL": "0.5",
                           "API_GATEWAY_LOG_LEVEL": "fatal"})
    assert s.metrics_interval_seconds == 30
    assert s.logging_level == 50


@pytest.mark.parametrize("name", ["API_GATEWAY_KEY", "API_GATEWAY_CONFIG_FILE",
                                  "API_GATEWAY_NAME", "API_GATEWAY_ENV",
                                  "API_GATEWAY_METRICS_CINTERVAL", "API_GATEWAY_METRICS_CHISTORY"])
def test_each_required_variable_is_named_when_missing(env, name):
    del env[name]
    with pytest.raises(SettingsError, match=f"^{name} is required"):
        Settings.from_env(env)


@pytest.mark.parametrize("name, value", [
    ("API_GATEWAY_METRICS_CINTERVAL", "0"), ("API_GATEWAY_METRICS_CINTERVAL", "soon"),
    ("API_GATEWAY_METRICS_CHISTORY", "601"), ("API_GATEWAY_METRICS_CHISTORY", "1.5"),
    ("API_GATEWAY_PORT", "70000"), ("API_GATEWAY_LOG_LEVEL", "loud"),
    ("API_GATEWAY_ENV", "a/b"), ("API_GATEWAY_THREADS", "0"), ("API_GATEWAY_KEY", "  "),
    ("API_GATEWAY_READ_TIMEOUT", "-1"), ("API_GATEWAY_LOG_FORMAT", "xml"),
    ("API_GATEWAY_MAX_ATTEMPTS", "0"), ("API_GATEWAY_MAX_ATTEMPTS", "2.5"),
    ("API_GATEWAY_FAILOVER_TIMEOUT", "0"), ("API_GATEWAY_FAILOVER_TIMEOUT", "nan"),
])
def test_malformed_values_are_named(env, name, value):
    with pytest.raises(SettingsError, match=f"^{name} "):
        Settings.from_env({**env, name: value})


def test_every_problem_is_listed_at_once(env):
    del env["API_GATEWAY_NAME"], env["API_GATEWAY_KEY"]
    env.update(API_GATEWAY_METRICS_CHISTORY="0", API_GATEWAY_PORT="http")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    # declaration order, one text per variable, joined on one line
    assert caught.value.problems == (
        "API_GATEWAY_KEY is required but not set",
        "API_GATEWAY_NAME is required but not set",
        "API_GATEWAY_METRICS_CHISTORY must be between 1 and 600, got '0'",
        "API_GATEWAY_PORT must be a whole number, got 'http'",
    )
    assert str(caught.value) == "; ".join(caught.value.problems)
    assert SettingsError("one problem").problems == ("one problem",)


@pytest.mark.parametrize("key", ["change-me", "fifteen-chars-x", "a" * 40, "ab" * 20,
                                 "1234567" * 3, "  short-key  "])
def test_a_weak_gateway_key_is_refused_without_being_shown(env, key):
    with pytest.raises(SettingsError, match=r"^API_GATEWAY_KEY is too weak: give at least 16 "
                                            r"characters, 8 of them different") as info:
        Settings.from_env({**env, "API_GATEWAY_KEY": key})
    assert key.strip() not in str(info.value)


@pytest.mark.parametrize("key", ["test-gateway-key-6f1e", "demo-key-not-a-secret",
                                 "bench-reload-key", "fake-gateway-key-for-ci",
                                 "Zq3_kW9-pX2mV7rT1yB4nH6cJ8dF0gLs"])
def test_the_keys_of_tests_demo_bench_and_chart_ci_are_strong_enough(env, key):
    assert Settings.from_env({**env, "API_GATEWAY_KEY": key}).gateway_key == key


def test_a_weak_gateway_key_stops_start_up_in_one_line(env):
    result = run_wsgi({**env, "API_GATEWAY_KEY": "change-me"})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("apirouter: cannot start: API_GATEWAY_KEY is too weak")
    assert "change-me" not in line


def test_unknown_gateway_variables_are_reported(env):
    s = Settings.from_env({**env, "API_GATEWAY_TREADS": "8"})
    assert s.unknown_names == ("API_GATEWAY_TREADS",)


@pytest.mark.parametrize("name, nearest", [
    ("API_GATEWAY_TREADS", "API_GATEWAY_THREADS"),
    ("API_GATEWAY_LOGLEVEL", "API_GATEWAY_LOG_LEVEL"),
    ("API_GATEWAY_CLIENT_KEY", "API_GATEWAY_CLIENT_KEYS"),
    ("api_gateway_read_timeout", "API_GATEWAY_READ_TIMEOUT"),
])
def test_a_misspelt_name_suggests_the_nearest_setting(env, name, nearest):
    s = Settings.from_env({**env, name: "8"})
    assert s.unknown_names == (name,)
    assert s.unknown_name_warning(name) == (
        f"environment variable {name} names no setting and is ignored; did you mean {nearest}?")


def test_a_name_close_to_no_setting_suggests_nothing(env):
    s = Settings.from_env({**env, "API_GATEWAY_REQUIRE_TOOLS": "1"})
    assert s.unknown_name_warning("API_GATEWAY_REQUIRE_TOOLS") == (
        "environment variable API_GATEWAY_REQUIRE_TOOLS names no setting and is ignored")


def test_a_missing_variable_names_the_typo_set_in_its_place(env):
    env["API_GATEWAY_CONFIG_FLE"] = env.pop("API_GATEWAY_CONFIG_FILE")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert caught.value.problems == ("API_GATEWAY_CONFIG_FILE is required but not set "
                                     "(API_GATEWAY_CONFIG_FLE is set: misspelt?)",)


def run_wsgi(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "wsgi.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_start_up_error_is_one_line_and_exit_1(env):
    del env["API_GATEWAY_NAME"]
    result = run_wsgi(env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "apirouter: cannot start: API_GATEWAY_NAME is required but not set"]


def test_every_start_up_problem_is_on_the_one_line(env):
    del env["API_GATEWAY_NAME"]
    result = run_wsgi({**env, "API_GATEWAY_THREADS": "many"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "apirouter: cannot start: API_GATEWAY_NAME is required but not set; "
        "API_GATEWAY_THREADS must be a whole number, got 'many'"]
    assert env["API_GATEWAY_KEY"] not in result.stderr


def test_invalid_configuration_stops_start_up(env, tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"endpoints": [{"uri": "gopher://x"}]}')
    result = run_wsgi({**env, "API_GATEWAY_CONFIG_FILE": str(bad)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "endpoints[0].uri: Not a valid URL" in lines[0]


def test_help_lists_every_variable():
    result = run_wsgi({}, "--help")
    assert result.returncode == 0
    assert "--env-file FILE" in result.stdout and ".env.sample" in result.stdout
    for name, _field, _default in Settings.variables():
        assert name in result.stdout


def test_readme_documents_every_variable():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _f, _d in Settings.variables() if f"`{name}`" not in readme]
    assert missing == []
