"""The fast environment read of the per-call paths sees what ``os.environ`` sees."""

from __future__ import annotations

import os

import pytest

from mamba_backends._env import getenv

NAME = "MAMBA_BACKENDS_TEST_ENV_READ"


def test_getenv_follows_run_time_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    assert getenv(NAME) is None
    monkeypatch.setenv(NAME, "0")
    assert getenv(NAME) == "0"
    os.environ[NAME] = "caf\u00e9 1"  # non-ASCII round trip through the fs encoding
    assert getenv(NAME) == os.environ.get(NAME) == "caf\u00e9 1"
    del os.environ[NAME]
    assert getenv(NAME) is None


def test_getenv_matches_os_environ_for_every_variable() -> None:
    for name, value in os.environ.items():
        assert getenv(name) == value, name
