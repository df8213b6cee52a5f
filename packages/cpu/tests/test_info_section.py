"""The CPU package's ``info`` section (entry point ``mamba_backends.info`` -> ``cpu-native``)."""

from __future__ import annotations

import pytest

from mamba_backends.info import collect_info, format_info, section_names
from mamba_backends_cpu import _info, isa


def _lib(active: bool, reason: str | None, cached: bool = False) -> dict:
    return {"active": active, "reason": reason, "cached": cached, "compiler": "cc 12",
            "march": "native", "openmp": "libgomp", "cache": "/c/mb_ssm_0.so"}  # fmt: skip


def test_registered_and_shown_by_info() -> None:
    assert "cpu-native" in section_names()
    info = collect_info()
    section = info["sections"]["cpu-native"]
    assert "error" not in section, section
    assert "cpu-native: native kernels" in format_info(info)


@pytest.mark.parametrize(
    ("libs", "summary", "line"),
    [
        ({"ssm": _lib(True, None)}, "native kernels active", "ssm    active"),
        ({"ssm": _lib(False, "not built yet", cached=True)}, "native kernels available",
         "ssm    built (cached), loads at first use"),
        ({"ssm": _lib(True, None), "conv": _lib(False, "no C compiler")},
         "native kernels unavailable for conv; the PyTorch fallback serves",
         "conv   no C compiler; the PyTorch fallback serves"),
    ],
)  # fmt: skip
def test_summary_says_whether_and_why(monkeypatch, libs, summary, line) -> None:
    from mamba_backends_cpu import native

    monkeypatch.setattr(native, "status", lambda: libs)
    section = _info.info_section()
    assert section.summary.startswith(summary)
    assert line in section.lines
    assert "cache    : /c" in section.lines
    assert section.data["libraries"] == libs
    assert section.data["isa"] in isa.LEVELS
    assert set(section.data["paths"]) == set(_info.OP_LIBRARIES)
    assert any(line.startswith("isa    : ") for line in section.lines)


def test_op_paths_name_the_library_or_why_pytorch(monkeypatch) -> None:
    libs = {"conv": _lib(True, None) | {"isa": "avx2"}, "ssm": _lib(False, "no C compiler"),
            "gdn": _lib(False, "not built yet")}  # fmt: skip
    paths = _info.op_paths(libs)
    assert paths["causal_conv1d_update"] == "native conv, avx2 build"
    assert paths["selective_scan_fn"] == "PyTorch (ssm: no C compiler; the PyTorch fallback serves)"
    assert paths["chunk_gated_delta_rule"] == "native gdn, -march=native"  # built at first use
    assert paths["linear_decode_forward"] == "PyTorch"
    # the shipped lightning table keeps fp32 products on every ISA (see its note)
    assert paths["lightning_attention"] == "PyTorch; bf16 inputs: fp32 products"


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ({"active": True, "reason": None, "cached": True}, "entry  active (decode conv: "),
        ({"active": False, "reason": "not built yet", "cached": False},
         "entry  not built yet (compiles at first use)"),
        ({"active": False, "reason": "build error: boom", "cached": False},
         "entry  build error: boom; the ctypes path serves"),
    ],
)  # fmt: skip
def test_entry_line_says_whether_and_why(monkeypatch, status, line) -> None:
    from mamba_backends_cpu.native import entry

    monkeypatch.setattr(entry, "status", lambda: status)
    section = _info.info_section()
    assert any(s.startswith(line) for s in section.lines), section.lines
    assert section.data["entry"] == status
