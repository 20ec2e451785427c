"""Settings: environment variables (RAYSQUAD_, nested with __), typos rejected, derived paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.config import AgentPoolConfig, RetryPolicy, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("RAYSQUAD_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()

    assert s.workers == 2
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
    with pytest.raises(ValidationError, match="wrokers"):
        Settings(wrokers=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="max_atempts"):
        RetryPolicy(max_atempts=3)  # type: ignore[call-arg]


def test_typo_in_a_nested_env_var_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSQUAD_RETRY__MAX_ATEMPTS", "5")

    with pytest.raises(ValidationError, match="max_atempts"):
        Settings()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.workers = 9  # type: ignore[misc]


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
        Settings(store="mysql")  # type: ignore[arg-type]
