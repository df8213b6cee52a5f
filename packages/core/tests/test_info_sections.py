"""``info`` sections contributed through the ``mamba_backends.info`` entry-point group, and the
discovery of installed distributions: a new vendor reaches ``info`` without touching core."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mamba_backends._resolve as resolve_mod
from mamba_backends.cli import main
from mamba_backends.info import INFO_GROUP, collect_info, format_info, installed_packages

AddDist = Callable[..., None]

VENDOR = """
from mamba_backends.info import InfoSection

def npu(requested=False):
    return InfoSection(data={"chips": 2, "driver": "9.9"}, summary="2 chips",
                       lines=("chip 0: idle", "chip 1: idle"))

def plain():
    return {"flags": {"fast": True}, "count": 3}

def slow(requested):
    if not requested:
        return None
    return InfoSection(data={"computed": True}, summary="expensive table")

def boom(requested=False):
    raise RuntimeError("driver exploded")

def wrong_type(requested=False):
    return 42

NOT_CALLABLE = "a string"
"""


@pytest.fixture
def add_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AddDist]:
    """``add_dist(name, groups={group: {ep: value}}, module=src)`` writes ``<name>-0.0.dist-info``
    and ``<name>_mod.py`` on a temporary ``sys.path`` entry. Entry-point lookups see only these
    fake distributions (the real ones are hidden)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: list[str] = []

    def only_fake(group: str) -> list[md.EntryPoint]:
        eps = [ep for d in md.distributions(path=[str(root)]) for ep in d.entry_points]
        return sorted((ep for ep in eps if ep.group == group), key=lambda ep: ep.name)

    monkeypatch.setattr(resolve_mod, "entry_points", only_fake)

    def add(name: str, groups: dict[str, dict[str, str]], module: str = "") -> None:
        info = root / f"{name}-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
        lines = []
        for group, eps in groups.items():
            lines += [f"[{group}]"] + [f"{k} = {v}" for k, v in eps.items()] + [""]
        (info / "entry_points.txt").write_text("\n".join(lines))
        mod = name.replace("-", "_") + "_mod"
        (root / f"{mod}.py").write_text(textwrap.dedent(module))
        written.append(mod)

    yield add
    for mod in written:
        sys.modules.pop(mod, None)


def _vendor(add_dist: AddDist, **eps: str) -> None:
    add_dist("acme-npu", {INFO_GROUP: {k: f"acme_npu_mod:{v}" for k, v in eps.items()}}, VENDOR)


def test_a_new_vendor_contributes_a_section_and_is_listed(add_dist: AddDist) -> None:
    _vendor(add_dist, npu="npu", plain="plain")
    add_dist("unrelated-lib", {"console_scripts": {"x": "unrelated_lib_mod:main"}})
    info = collect_info()
    assert info["packages"].get("acme-npu") == "0.0"  # discovered by its entry points
    assert "unrelated-lib" not in info["packages"]
    npu = info["sections"]["npu"]
    assert npu == {
        "summary": "2 chips",
        "data": {"chips": 2, "driver": "9.9"},
        "lines": ["chip 0: idle", "chip 1: idle"],
    }
    assert info["sections"]["plain"]["data"] == {"flags": {"fast": True}, "count": 3}
    text = format_info(info)
    assert "npu      : 2 chips\n  chip 0: idle\n  chip 1: idle" in text
    assert "plain    :\n  flags:\n    fast: True\n  count: 3" in text
    json.dumps(info)  # JSON-friendly throughout


def test_distributions_named_mamba_backends_are_listed(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ("mamba-backends-npu", "mamba_backends_gpu2", "numpy-ish"):
        info = root / f"{name}-1.2.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    found = installed_packages(md.distributions(path=[str(root)]))
    assert found == {"mamba_backends_gpu2": "1.2", "mamba-backends-npu": "1.2"}


def test_a_section_that_is_expensive_is_computed_only_when_asked(
    add_dist: AddDist, capsys: pytest.CaptureFixture
) -> None:
    _vendor(add_dist, **{"slow-table": "slow"})
    assert "slow-table" not in collect_info()["sections"]
    assert collect_info(sections={"slow-table"})["sections"]["slow-table"]["summary"] == (
        "expensive table"
    )
    assert main(["info", "--slow-table"]) == 0  # --NAME: shorthand of --section NAME
    assert "slow-table: expensive table" in capsys.readouterr().out
    assert main(["info", "--json", "--section", "slow-table"]) == 0
    assert json.loads(capsys.readouterr().out)["sections"]["slow-table"]["data"] == {
        "computed": True
    }


def test_unknown_section_is_a_clear_error(add_dist: AddDist, capsys: pytest.CaptureFixture) -> None:
    _vendor(add_dist, npu="npu")
    assert main(["info", "--section", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "no installed package contributes an info section named 'tpu'" in err
    assert "installed sections: npu" in err


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        ("boom", "RuntimeError: driver exploded"),
        ("wrong_type", "returned int"),
        ("NOT_CALLABLE", "not a callable"),
        ("no_such_function", "AttributeError"),
    ],
)
def test_a_failing_section_is_reported_never_fatal(
    add_dist: AddDist, capsys: pytest.CaptureFixture, value: str, cause: str
) -> None:
    _vendor(add_dist, npu="npu", bad=value)
    add_dist("broken-vendor", {INFO_GROUP: {"gone": "no_such_module_xyz:section"}})
    info = collect_info()
    assert cause in info["sections"]["bad"]["error"]
    assert "ModuleNotFoundError" in info["sections"]["gone"]["error"]
    assert info["sections"]["npu"]["summary"] == "2 chips"  # the others still show
    assert "bad      : error: " in format_info(info)
    assert main(["info"]) == 0  # not asked for: reported, not an exit status
    assert main(["info", "--section", "bad"]) == 1  # asked for and failed
    assert "error" in capsys.readouterr().out
