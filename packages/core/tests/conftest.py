"""Fixtures shared by the core tests: fake vendor distributions on a temporary sys.path."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mamba_backends import clear_backend_cache, reset_current_platform


@pytest.fixture(autouse=True)
def _fresh_selection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with no cached platform or backend choice."""
    monkeypatch.delenv("MAMBA_BACKENDS_PLATFORM", raising=False)
    reset_current_platform()
    clear_backend_cache()
    yield
    reset_current_platform()
    clear_backend_cache()


FakeDist = Callable[..., None]


@pytest.fixture
def fake_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDist]:
    """Install fake distributions: ``fake_dists(name, platforms={...}, module=source)``.

    Each call writes ``<name>-0.0.dist-info`` with the given ``mamba_backends.platforms`` entry
    points and an importable module ``<name>_mod`` holding ``source``. Only fake distributions
    are visible: the real ones are hidden by filtering the entry-point lookup to ``tmp_path``.
    """
    import importlib.metadata as md

    import mamba_backends._resolve as resolve_mod

    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: list[str] = []

    def only_fake(group: str) -> list[md.EntryPoint]:
        eps = []
        for dist in md.distributions(path=[str(root)]):
            eps += [ep for ep in dist.entry_points if ep.group == group]
        return sorted(eps, key=lambda ep: ep.name)

    monkeypatch.setattr(resolve_mod, "entry_points", only_fake)
    import mamba_backends.platform as platform_mod

    monkeypatch.setattr(platform_mod, "entry_points", only_fake)

    def add(name: str, platforms: dict[str, str], module: str = "") -> None:
        info = root / f"{name}-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
        lines = ["[mamba_backends.platforms]"] + [f"{k} = {v}" for k, v in platforms.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        (root / f"{name}_mod.py").write_text(textwrap.dedent(module))
        written.append(f"{name}_mod")

    yield add
    for mod in written:
        sys.modules.pop(mod, None)
