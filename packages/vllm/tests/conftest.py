"""Fixtures for the vLLM plugin tests: tiny checkpoints and one engine start per configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models
from _engines import _WRITERS, Engines


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {name: write(root / name) for name, write in _WRITERS.items()}


@pytest.fixture(scope="session")
def prompts() -> list[list[int]]:
    return _models.prompts()


@pytest.fixture(scope="session")
def engines(
    checkpoints: dict[str, Path],
    prompts: list[list[int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Engines:
    return Engines(checkpoints, prompts, tmp_path_factory.mktemp("engines"))
