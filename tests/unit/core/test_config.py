"""Settings: environment variables (RAYSQUAD_, nested with __), typos rejected, derived paths."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from runtime.core.config import AgentPoolConfig, GateLimits, RetryPolicy, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("RAYSQUAD_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()

    assert s.workers == 1 and s.tools.executors == 1  # one machine: one of each by default
    assert s.retry == RetryPolicy()
    assert s.agents == {}
    assert s.data_dir == Path(".raysquad")


def test_reads_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_WORKERS", "5")
    monkeypatch.setenv("RAYSQUAD_LEASE_S", "2.5")
    monkeypatch.setenv("RAYSQUAD_RAY_ADDRESS", "auto")
    monkeypatch.setenv("RAYSQUAD_DATA_DIR", "/srv/rs")

    s = Settings()

    assert (s.workers, s.lease_s, s.ray_address, s.data_dir) == (5, 2.5, "auto", Path("/srv/rs"))


def test_reads_nested_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_RETRY__MAX_ATTEMPTS", "5")
    monkeypatch.setenv("RAYSQUAD_RETRY__NON_RETRYABLE", '["KeyError"]')
    monkeypatch.setenv("RAYSQUAD_SIMULATED__TTFT_S", "0")
    monkeypatch.setenv("RAYSQUAD_AGENTS__planner__max_replicas", "7")

    s = Settings()

    assert s.retry.max_attempts == 5
    assert s.retry.non_retryable == ("KeyError",)
    assert s.retry.initial_backoff_s == RetryPolicy().initial_backoff_s  # others keep their defaults
    assert s.simulated.ttft_s == 0
    assert s.agents == {"planner": AgentPoolConfig(max_replicas=7)}


def test_init_arguments_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_WORKERS", "5")

    assert Settings(workers=3).workers == 3


def test_invalid_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_WORKERS", "0")

    with pytest.raises(ValidationError, match="workers"):
        Settings()


def test_typo_in_a_field_is_rejected() -> None:
    typo: dict[str, Any] = {"wrokers": 3}
    with pytest.raises(ValidationError, match="wrokers"):
        Settings(**typo)
    typo = {"max_atempts": 3}
    with pytest.raises(ValidationError, match="max_atempts"):
        RetryPolicy(**typo)


def test_typo_in_a_nested_env_var_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_RETRY__MAX_ATEMPTS", "5")

    with pytest.raises(ValidationError, match="max_atempts"):
        Settings()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.workers = 9  # type: ignore[misc]  # frozen: what this test checks


def test_database_path_defaults_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(data_dir=tmp_path).database_path == tmp_path / "raysquad.db"
    assert Settings(data_dir=tmp_path).blob_dir == tmp_path / "blobs"

    monkeypatch.setenv("RAYSQUAD_DATA_DIR", str(tmp_path / "env"))
    assert Settings().database_path == tmp_path / "env" / "raysquad.db"

    explicit = tmp_path / "elsewhere.db"
    assert Settings(data_dir=tmp_path, sqlite_path=explicit).database_path == explicit


def test_store_backend_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_STORE", "postgres")
    monkeypatch.setenv("RAYSQUAD_POSTGRES_URL", "postgresql://rs@db:5432/raysquad")

    s = Settings()

    assert (s.store, s.postgres_url) == ("postgres", "postgresql://rs@db:5432/raysquad")
    assert Settings(store="sqlite").postgres_url == "postgresql://rs@db:5432/raysquad"
    with pytest.raises(ValidationError):
        Settings(store="mysql")


# -- secrets and keys that would open a door (audit L1, L14) and gate limits that mean nothing ----

GOOD_SECRET = "whsec_" + base64.b64encode(b"a-webhook-secret-of-32-bytes!!!!").decode()


@pytest.mark.parametrize("secret", ["abcd", "hunter2", "whsec_", "whsec_x", "whsec_!!!!",
                                    "whsec_" + base64.b64encode(b"23 bytes is too short!!").decode()])
def test_a_weak_or_broken_webhook_secret_is_refused_at_load(secret: str) -> None:
    configs: list[dict[str, Any]] = [
        {"webhooks": {"cms": {"topic": "docs.new", "secrets": [GOOD_SECRET, secret]}}},
        {"webhooks_out": {"ops": {"url": "https://example.com/hook", "topics": ["task.failed"],
                                  "secret": secret}}}]
    for config in configs:
        with pytest.raises(ValidationError) as caught:
            Settings(**config)
        message = str(caught.value)
        assert "'whsec_' followed by the base64 of at least 24 random bytes" in message
        assert "input_value" not in message  # the secret is not echoed


def test_a_strong_webhook_secret_loads_padded_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    unpadded = "whsec_" + base64.b64encode(b"twenty-five bytes secret!").decode().rstrip("=")
    monkeypatch.setenv("RAYSQUAD_WEBHOOKS", json.dumps(
        {"cms": {"topic": "docs.new", "secrets": [GOOD_SECRET, unpadded]}}))

    assert Settings().webhooks["cms"].secrets == (GOOD_SECRET, unpadded)


@pytest.mark.parametrize("keys", ['{"": "tenant-a"}', '{"  ": "tenant-a", "k": "tenant-b"}'])
def test_an_empty_api_key_is_refused(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("RAYSQUAD_API_KEYS", keys)

    with pytest.raises(ValidationError, match="an empty key"):
        Settings()


@pytest.mark.parametrize("limits", [
    {"requests": True}, {"concurrency": False}, {"tokens": "5"}, {"requests": 5.5},
    {"max_hold_s": 2.8e16}, {"max_hold_s": True}, {"interval_s": 1e300}, {"interval_s": "1"},
    {"requests": 10**9 + 1}, {"tokens": 10**12 + 1}, {"concurrency": 10**6 + 1},
])
def test_gate_limits_refuse_booleans_strings_and_values_past_their_bounds(
        limits: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GateLimits.model_validate_json(json.dumps(limits))
    with pytest.raises(ValidationError):
        GateLimits(**limits)


def test_gate_limits_take_integers_for_seconds_and_the_bounds_themselves() -> None:
    limits = GateLimits.model_validate_json(
        '{"requests": 1000000000, "tokens": 1000000000000, "concurrency": 1000000, '
        '"interval_s": 86400, "max_hold_s": 86400}')

    assert (limits.interval_s, limits.max_hold_s, limits.requests) == (86_400.0, 86_400.0, 10**9)


def test_the_per_tenant_task_cap_leaves_room_for_others_only_where_there_are_others() -> None:
    alone = Settings(queue_capacity=1000)
    one = Settings(queue_capacity=1000, api_keys={"k1": "a", "k2": "a"})
    several = Settings(queue_capacity=1000, api_keys={"k1": "a", "k2": "b"})
    assert alone.tenant_task_cap == one.tenant_task_cap == 1000
    assert several.tenant_task_cap == 250
    assert Settings(queue_capacity=1000, tenant_queued_tasks=7).tenant_task_cap == 7
