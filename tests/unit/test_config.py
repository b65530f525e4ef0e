"""Settings from app.conf and env, as specified in API.md "Celery integration" (settings)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from snakepit_celery.config import (
    SETTING_NAMES,
    SnakepitSettings,
    env_name,
    load_settings,
    resolve_store_url,
)
from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.policy.settings import BREAKER_KEYS, HEALTH_KEYS, BreakerConfig, HealthConfig


def load(**conf: Any) -> SnakepitSettings:
    return load_settings(conf, env={})


# -- defaults -----------------------------------------------------------------------


def test_defaults_match_the_api() -> None:
    settings = load_settings({}, env={})
    assert settings.store_url is None
    assert settings.key_prefix == "snakepit"
    assert settings.fail_open is True
    assert dict(settings.breaker) == {
        "failure_threshold": 5,
        "reset_timeout": 30.0,
        "half_open_max_calls": 1,
        "max_staleness": 0.25,
    }
    assert settings.retry_policy is None
    assert settings.crash_barrier == CrashBarrierConfig()
    assert dict(settings.health) == {
        "pool": "default",
        "max_crashes": 10,
        "crash_window": 60.0,
        "check_interval": 30.0,
        "max_worker_crashes": 3,
    }
    assert settings.hardware is None
    assert settings.lock_file is None
    assert settings.defer_on_open is True
    assert settings.metrics_port is None
    assert settings.allow_waiting is False


def test_loaded_defaults_equal_the_dataclass_defaults() -> None:
    assert load_settings(None, env={}) == SnakepitSettings()


def test_every_setting_has_a_snakepit_name() -> None:
    fields = {f.name for f in dataclasses.fields(SnakepitSettings)}
    assert set(SETTING_NAMES) == {f"snakepit_{name}" for name in fields}


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.fail_open = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.breaker["failure_threshold"] = 1  # type: ignore[index]


def test_breaker_and_health_settings_are_typed_values() -> None:
    settings = load(snakepit_breaker={"reset_timeout": 5}, snakepit_health={"pool": "gpu"})
    assert settings.breaker == BreakerConfig(reset_timeout=5.0)
    assert settings.health == HealthConfig(pool="gpu")
    assert load(snakepit_breaker=BreakerConfig(failure_threshold=2)).breaker.failure_threshold == 2


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: BreakerConfig(failure_threshold=0), "failure_threshold"),
        (lambda: BreakerConfig(max_staleness=-1), "max_staleness"),
        (lambda: HealthConfig(pool=""), "pool"),
        (lambda: HealthConfig(crash_window=0), "crash_window"),
    ],
)
def test_breaker_and_health_values_are_validated_at_construction(
    build: Callable[[], object], name: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.setting == name


def test_as_dict_is_json_safe() -> None:
    settings = load(snakepit_retry_policy={"max_attempts": 4}, snakepit_metrics_port=9100)
    data = settings.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["retry_policy"]["max_attempts"] == 4
    assert data["metrics_port"] == 9100


# -- good values, one table -------------------------------------------------------------

GOOD: list[tuple[str, Any, str, Any]] = [
    ("snakepit_store_url", "redis://localhost:6379/2", "store_url", "redis://localhost:6379/2"),
    ("snakepit_store_url", "rediss://h:6380/0", "store_url", "rediss://h:6380/0"),
    ("snakepit_store_url", "unix:///tmp/redis.sock", "store_url", "unix:///tmp/redis.sock"),
    (
        "snakepit_store_url",
        "redis+sentinel://h1:26379,h2:26379/mymaster/0",
        "store_url",
        "redis+sentinel://h1:26379,h2:26379/mymaster/0",
    ),
    ("snakepit_store_url", "redis+cluster://h:7000", "store_url", "redis+cluster://h:7000"),
    ("snakepit_store_url", "memory://", "store_url", "memory://"),
    ("snakepit_store_url", None, "store_url", None),
    ("snakepit_key_prefix", "myapp:sp", "key_prefix", "myapp:sp"),
    ("snakepit_fail_open", False, "fail_open", False),
    ("snakepit_fail_open", "no", "fail_open", False),
    ("snakepit_defer_on_open", False, "defer_on_open", False),
    ("snakepit_allow_waiting", True, "allow_waiting", True),
    ("snakepit_hardware", "/etc/hw.json", "hardware", "/etc/hw.json"),
    ("snakepit_hardware", pathlib.Path("/etc/hw.json"), "hardware", "/etc/hw.json"),
    ("snakepit_lock_file", "/srv/app/snakepit.lock", "lock_file", "/srv/app/snakepit.lock"),
    ("snakepit_lock_file", None, "lock_file", None),
    ("snakepit_metrics_port", 9100, "metrics_port", 9100),
    ("snakepit_metrics_port", 1, "metrics_port", 1),
    ("snakepit_metrics_port", 65535, "metrics_port", 65535),
    ("snakepit_metrics_port", None, "metrics_port", None),
    ("snakepit_retry_policy", None, "retry_policy", None),
    (
        "snakepit_retry_policy",
        RetryPolicy(max_attempts=7),
        "retry_policy",
        RetryPolicy(max_attempts=7),
    ),
    (
        "snakepit_retry_policy",
        {"max_attempts": 5, "jitter": True},
        "retry_policy",
        RetryPolicy(max_attempts=5, jitter=True),
    ),
    (
        "snakepit_crash_barrier",
        {"enabled": True},
        "crash_barrier",
        CrashBarrierConfig(enabled=True),
    ),
    (
        "snakepit_crash_barrier",
        CrashBarrierConfig(max_restarts=2),
        "crash_barrier",
        CrashBarrierConfig(max_restarts=2),
    ),
    ("snakepit_crash_barrier", None, "crash_barrier", CrashBarrierConfig()),
]


@pytest.mark.parametrize(
    ("setting", "value", "attribute", "expected"),
    GOOD,
    ids=[f"{s}={v!r}" for s, v, _, _ in GOOD],
)
def test_good_values_are_read(setting: str, value: Any, attribute: str, expected: Any) -> None:
    assert getattr(load(**{setting: value}), attribute) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"failure_threshold": 2}, {"failure_threshold": 2}),
        ({"reset_timeout": 5}, {"reset_timeout": 5.0}),
        ({"half_open_max_calls": 3}, {"half_open_max_calls": 3}),
        ({"max_staleness": 0}, {"max_staleness": 0.0}),
        (None, {}),
    ],
)
def test_breaker_dict_overrides_only_the_keys_given(
    value: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    breaker = load(snakepit_breaker=value).breaker
    assert set(breaker) == set(BREAKER_KEYS)
    for key, wanted in expected.items():
        assert breaker[key] == wanted


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"pool": "gpu"}, {"pool": "gpu"}),
        ({"max_crashes": 3, "crash_window": 10}, {"max_crashes": 3, "crash_window": 10.0}),
        ({"check_interval": 1.5}, {"check_interval": 1.5}),
        ({"max_worker_crashes": 1}, {"max_worker_crashes": 1}),
    ],
)
def test_health_dict_overrides_only_the_keys_given(
    value: dict[str, Any], expected: dict[str, Any]
) -> None:
    health = load(snakepit_health=value).health
    assert set(health) == set(HEALTH_KEYS)
    for key, wanted in expected.items():
        assert health[key] == wanted


# -- bad values, one table ---------------------------------------------------------------

BAD: list[tuple[str, Any, str, str]] = [
    # (setting, value, name the error must carry, a word of the allowed values)
    ("snakepit_store_url", "amqp://guest@localhost//", "snakepit_store_url", "redis://"),
    ("snakepit_store_url", "localhost:6379", "snakepit_store_url", "redis://"),
    ("snakepit_store_url", 6379, "snakepit_store_url", "redis://"),
    ("snakepit_key_prefix", "", "snakepit_key_prefix", "non-empty"),
    ("snakepit_key_prefix", "my app", "snakepit_key_prefix", "spaces"),
    ("snakepit_key_prefix", "sp{1}", "snakepit_key_prefix", "braces"),
    ("snakepit_key_prefix", None, "snakepit_key_prefix", "non-empty"),
    ("snakepit_fail_open", "maybe", "snakepit_fail_open", "True or False"),
    ("snakepit_fail_open", 2, "snakepit_fail_open", "True or False"),
    ("snakepit_fail_open", None, "snakepit_fail_open", "True or False"),
    ("snakepit_defer_on_open", "sometimes", "snakepit_defer_on_open", "True or False"),
    ("snakepit_allow_waiting", [], "snakepit_allow_waiting", "True or False"),
    ("snakepit_hardware", "", "snakepit_hardware", "path"),
    ("snakepit_hardware", 3, "snakepit_hardware", "path"),
    ("snakepit_lock_file", ["a"], "snakepit_lock_file", "path"),
    ("snakepit_metrics_port", 0, "snakepit_metrics_port", "1-65535"),
    ("snakepit_metrics_port", 65536, "snakepit_metrics_port", "1-65535"),
    ("snakepit_metrics_port", -1, "snakepit_metrics_port", "1-65535"),
    ("snakepit_metrics_port", "http", "snakepit_metrics_port", "1-65535"),
    ("snakepit_metrics_port", True, "snakepit_metrics_port", "1-65535"),
    ("snakepit_metrics_port", 9100.5, "snakepit_metrics_port", "1-65535"),
    ("snakepit_breaker", [1], "snakepit_breaker", "failure_threshold"),
    (
        "snakepit_breaker",
        {"failure_threshold": 0},
        'snakepit_breaker["failure_threshold"]',
        "integer",
    ),
    (
        "snakepit_breaker",
        {"failure_threshold": "5"},
        'snakepit_breaker["failure_threshold"]',
        "integer",
    ),
    ("snakepit_breaker", {"reset_timeout": -1}, 'snakepit_breaker["reset_timeout"]', ">= 0"),
    (
        "snakepit_breaker",
        {"half_open_max_calls": 0},
        'snakepit_breaker["half_open_max_calls"]',
        "integer",
    ),
    ("snakepit_breaker", {"max_staleness": -0.1}, 'snakepit_breaker["max_staleness"]', ">= 0"),
    ("snakepit_health", "pool=gpu", "snakepit_health", "JSON"),
    ("snakepit_health", {"pool": ""}, 'snakepit_health["pool"]', "non-empty"),
    ("snakepit_health", {"max_crashes": 0}, 'snakepit_health["max_crashes"]', "integer"),
    ("snakepit_health", {"crash_window": 0}, 'snakepit_health["crash_window"]', "> 0"),
    ("snakepit_health", {"check_interval": -5}, 'snakepit_health["check_interval"]', "> 0"),
    (
        "snakepit_health",
        {"max_worker_crashes": 0},
        'snakepit_health["max_worker_crashes"]',
        "integer",
    ),
    ("snakepit_retry_policy", 3, "snakepit_retry_policy", "RetryPolicy"),
    (
        "snakepit_retry_policy",
        {"max_attempts": 0},
        'snakepit_retry_policy["max_attempts"]',
        ">= 1",
    ),
    (
        "snakepit_retry_policy",
        {"retriable_errors": ["slow"]},
        'snakepit_retry_policy["retriable_errors"]',
        "timeout",
    ),
    ("snakepit_crash_barrier", 1, "snakepit_crash_barrier", "CrashBarrierConfig"),
    (
        "snakepit_crash_barrier",
        {"retry": "sometimes"},
        'snakepit_crash_barrier["retry"]',
        "idempotent",
    ),
    (
        "snakepit_crash_barrier",
        {"max_restarts": -1},
        'snakepit_crash_barrier["max_restarts"]',
        "",
    ),
]


@pytest.mark.parametrize(
    ("setting", "value", "name", "allowed_word"),
    BAD,
    ids=[f"{s}={v!r}" for s, v, _, _ in BAD],
)
def test_bad_values_raise_config_error_naming_setting_value_and_allowed(
    setting: str, value: Any, name: str, allowed_word: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(**{setting: value})
    message = str(info.value)
    assert info.value.setting == name
    assert name in message
    assert allowed_word in message


def test_bad_nested_value_message_shows_the_bad_value() -> None:
    with pytest.raises(ConfigError, match=r'snakepit_breaker\["failure_threshold"\].*-3'):
        load(snakepit_breaker={"failure_threshold": -3})


@pytest.mark.parametrize(
    ("setting", "key", "suggestion"),
    [
        ("snakepit_breaker", "failure_treshold", "failure_threshold"),
        ("snakepit_health", "max_crash", "max_crashes"),
        ("snakepit_retry_policy", "max_attempt", "max_attempts"),
        ("snakepit_crash_barrier", "enable", "enabled"),
    ],
)
def test_unknown_keys_in_dict_settings_suggest_the_closest(
    setting: str, key: str, suggestion: str
) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'") as info:
        load(**{setting: {key: 1}})
    assert setting in str(info.value)


def test_unknown_snakepit_setting_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'snakepit_fail_open'"):
        load(snakepit_fail_opn=False)


def test_unknown_setting_without_a_close_match_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="snakepit_store_url") as info:
        load(snakepit_zzz=1)
    assert "snakepit_zzz" in str(info.value)


def test_other_apps_settings_are_ignored() -> None:
    settings = load_settings({"broker_url": "redis://", "redbeat_key_prefix": "x"}, env={})
    assert settings == SnakepitSettings()


# -- celery app.conf ----------------------------------------------------------------------


def test_reads_a_celery_app_conf() -> None:
    app = Celery("cfg-test", broker="redis://localhost:6379/0", set_as_current=False)
    app.conf.snakepit_fail_open = False
    app.conf.snakepit_crash_barrier = {"enabled": True}
    settings = load_settings(app.conf, env={})
    assert settings.fail_open is False
    assert settings.crash_barrier.enabled is True


def test_unknown_name_in_a_celery_app_conf_is_an_error() -> None:
    app = Celery("cfg-test", set_as_current=False)
    app.conf.snakepit_brekaer = {}
    with pytest.raises(ConfigError, match="did you mean 'snakepit_breaker'"):
        load_settings(app.conf, env={})


# -- environment ------------------------------------------------------------------------

ENV_GOOD: list[tuple[str, str, str, Any]] = [
    ("SNAKEPIT_STORE_URL", "redis://h:6379/3", "store_url", "redis://h:6379/3"),
    ("SNAKEPIT_KEY_PREFIX", "fleet", "key_prefix", "fleet"),
    ("SNAKEPIT_FAIL_OPEN", "false", "fail_open", False),
    ("SNAKEPIT_FAIL_OPEN", "0", "fail_open", False),
    ("SNAKEPIT_FAIL_OPEN", "No", "fail_open", False),
    ("SNAKEPIT_FAIL_OPEN", "off", "fail_open", False),
    ("SNAKEPIT_DEFER_ON_OPEN", "FALSE", "defer_on_open", False),
    ("SNAKEPIT_ALLOW_WAITING", "yes", "allow_waiting", True),
    ("SNAKEPIT_ALLOW_WAITING", "1", "allow_waiting", True),
    ("SNAKEPIT_ALLOW_WAITING", "true", "allow_waiting", True),
    ("SNAKEPIT_HARDWARE", "/hw.json", "hardware", "/hw.json"),
    ("SNAKEPIT_LOCK_FILE", "/app/snakepit.lock", "lock_file", "/app/snakepit.lock"),
    ("SNAKEPIT_METRICS_PORT", "9100", "metrics_port", 9100),
    (
        "SNAKEPIT_RETRY_POLICY",
        '{"max_attempts": 4, "backoff": null}',
        "retry_policy",
        RetryPolicy(max_attempts=4, backoff=None),
    ),
    (
        "SNAKEPIT_CRASH_BARRIER",
        '{"enabled": true, "retry": "always"}',
        "crash_barrier",
        CrashBarrierConfig(enabled=True, retry="always"),
    ),
]


@pytest.mark.parametrize(
    ("variable", "text", "attribute", "expected"),
    ENV_GOOD,
    ids=[f"{v}={t}" for v, t, _, _ in ENV_GOOD],
)
def test_env_values_are_parsed(variable: str, text: str, attribute: str, expected: Any) -> None:
    assert getattr(load_settings({}, env={variable: text}), attribute) == expected


def test_env_json_dicts_for_breaker_and_health() -> None:
    settings = load_settings(
        {},
        env={
            "SNAKEPIT_BREAKER": '{"failure_threshold": 9}',
            "SNAKEPIT_HEALTH": '{"pool": "gpu"}',
        },
    )
    assert settings.breaker["failure_threshold"] == 9
    assert settings.health["pool"] == "gpu"


@pytest.mark.parametrize(
    ("variable", "text", "name"),
    [
        ("SNAKEPIT_FAIL_OPEN", "maybe", "SNAKEPIT_FAIL_OPEN"),
        ("SNAKEPIT_METRICS_PORT", "99999", "SNAKEPIT_METRICS_PORT"),
        ("SNAKEPIT_METRICS_PORT", "port", "SNAKEPIT_METRICS_PORT"),
        ("SNAKEPIT_BREAKER", "{not json", "SNAKEPIT_BREAKER"),
        ("SNAKEPIT_BREAKER", "[1, 2]", "SNAKEPIT_BREAKER"),
        ("SNAKEPIT_BREAKER", '{"failure_threshold": 0}', 'SNAKEPIT_BREAKER["failure_threshold"]'),
        ("SNAKEPIT_RETRY_POLICY", '{"max_attempts": 0}', 'SNAKEPIT_RETRY_POLICY["max_attempts"]'),
        ("SNAKEPIT_KEY_PREFIX", "a b", "SNAKEPIT_KEY_PREFIX"),
        ("SNAKEPIT_STORE_URL", "amqp://x", "SNAKEPIT_STORE_URL"),
    ],
)
def test_bad_env_values_name_the_variable(variable: str, text: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, env={variable: text})
    assert info.value.setting == name
    assert name in str(info.value)


def test_only_env_variables_named_after_a_setting_are_read() -> None:
    env = {
        "SNAKEPIT_TEST_REDIS_URL": "redis://elsewhere",
        "SNAKEPIT_CHAOS_FULL": "1",
        "SNAKEPIT_FAIL_OPN": "false",
    }
    assert load_settings({}, env=env) == SnakepitSettings()


def test_empty_env_variable_counts_as_unset() -> None:
    assert load_settings({}, env={"SNAKEPIT_METRICS_PORT": ""}).metrics_port is None


def test_app_conf_wins_over_env() -> None:
    settings = load_settings(
        {"snakepit_fail_open": True, "snakepit_key_prefix": "conf"},
        env={"SNAKEPIT_FAIL_OPEN": "false", "SNAKEPIT_KEY_PREFIX": "env"},
    )
    assert settings.fail_open is True
    assert settings.key_prefix == "conf"


def test_env_fills_what_app_conf_leaves_unset() -> None:
    settings = load_settings(
        {"snakepit_fail_open": True}, env={"SNAKEPIT_STORE_URL": "redis://h/1"}
    )
    assert settings.store_url == "redis://h/1"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_METRICS_PORT", "9200")
    assert load_settings({}).metrics_port == 9200


def test_env_name_upper_cases_the_setting() -> None:
    assert env_name("snakepit_fail_open") == "SNAKEPIT_FAIL_OPEN"


# -- resolve_store_url ------------------------------------------------------------------


def test_explicit_store_url_wins() -> None:
    settings = load(snakepit_store_url="redis://store:6379/5")
    assert resolve_store_url(settings, "redis://broker/0", "redis://backend/1") == (
        "redis://store:6379/5"
    )


@pytest.mark.parametrize(
    ("broker", "backend", "expected"),
    [
        ("redis://broker:6379/0", None, "redis://broker:6379/0"),
        ("rediss://:pw@broker:6380/0?ssl_cert_reqs=required", None, None),
        ("amqp://guest@rabbit//", "redis://backend:6379/1", "redis://backend:6379/1"),
        ("redis://a:6379/0;redis://b:6379/0", None, "redis://a:6379/0"),
        ("redis+socket:///tmp/redis.sock", None, "unix:///tmp/redis.sock"),
        ("unix:///tmp/redis.sock?db=2", None, "unix:///tmp/redis.sock?db=2"),
        (None, "redis://backend/2", "redis://backend/2"),
    ],
)
def test_store_url_defaults_to_the_broker_then_the_backend_when_redis(
    broker: str | None, backend: str | None, expected: str | None
) -> None:
    assert resolve_store_url(load(), broker, backend) == (expected or broker)


def test_sentinel_broker_becomes_a_sentinel_store_url_given_the_master_name() -> None:
    url = resolve_store_url(
        load(),
        "sentinel://:pw@s1:26379/0;sentinel://s2:26380/0",
        None,
        master_name="mymaster",
    )
    assert url == "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/0"


def test_sentinel_broker_without_master_name_is_not_usable() -> None:
    with pytest.raises(ConfigError, match="snakepit_store_url"):
        resolve_store_url(load(), "sentinel://s1:26379", None)


def test_no_redis_anywhere_explains_what_to_set() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_store_url(load(), "amqp://guest:secret@rabbit//", "rpc://")
    message = str(info.value)
    assert info.value.setting == "snakepit_store_url"
    assert "set snakepit_store_url" in message
    assert "amqp://guest:***@rabbit//" in message
    assert "secret" not in message
