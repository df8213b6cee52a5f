"""The workspace moves in lockstep: one version, exact ``==`` pins between members."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[3]
MEMBERS = ("core", "cpu", "triton", "cuda", "rocm", "xpu", "vllm")


def _load(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _pyprojects() -> dict[str, dict]:
    if not (ROOT / "packages").is_dir():
        pytest.skip("not running from a source checkout")
    out = {"mamba-backends": _load(ROOT / "pyproject.toml")}
    for m in MEMBERS:
        data = _load(ROOT / "packages" / m / "pyproject.toml")
        out[data["project"]["name"]] = data
    return out


def _our_requirements(project: dict) -> list[str]:
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return [r for r in reqs if r.startswith("mamba-backends")]


def test_every_member_has_the_same_version():
    versions = {name: p["project"]["version"] for name, p in _pyprojects().items()}
    assert len(set(versions.values())) == 1, versions


def test_internal_pins_are_exact_and_current():
    projects = _pyprojects()
    version = projects["mamba-backends"]["project"]["version"]
    for name, data in projects.items():
        for req in _our_requirements(data["project"]):
            m = re.fullmatch(r"(mamba-backends-[a-z]+)==([\w.]+)", req.replace(" ", ""))
            assert m, f"{name}: {req!r} must be an exact == pin"
            assert m.group(1) in projects, f"{name}: {req!r} names no workspace member"
            assert m.group(2) == version, f"{name}: {req!r} drifted from {version}"


def test_meta_extras_map_to_members():
    meta = _pyprojects()["mamba-backends"]["project"]
    extras = meta["optional-dependencies"]
    assert set(extras) == {"cpu", "cuda", "rocm", "xpu", "vllm"}
    for extra, reqs in extras.items():
        assert reqs == [f"mamba-backends-{extra}=={meta['version']}"]


def test_package_versions_match_metadata():
    import mamba_backends

    assert mamba_backends.__version__ == _pyprojects()["mamba-backends-core"]["project"]["version"]


def test_workspace_members_and_lock():
    root = _pyprojects()["mamba-backends"]
    assert root["tool"]["uv"]["workspace"]["members"] == ["packages/*"]
    lock = ROOT / "uv.lock"
    assert lock.is_file(), "uv.lock must be committed"
    text = lock.read_text()
    for name in _pyprojects():
        assert f'name = "{name}"' in text, f"uv.lock lacks {name}: run `uv lock`"
