"""The CPU ISA level: flags -> level, the ATEN cap, and the tuning key it feeds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mamba_backends_cpu import isa
from mamba_backends_cpu.tuning import cpu_config

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


@pytest.mark.parametrize(
    ("arch", "flags", "level"),
    [
        ("x86_64", AVX512 | {"avx512_bf16", "amx_bf16"}, "avx512-bf16"),
        ("x86_64", AVX512, "avx512"),
        ("x86_64", AVX2, "avx2"),
        ("x86_64", AVX2 - {"fma"}, "portable"),  # AVX2 without FMA is not x86-64-v3
        ("x86_64", frozenset({"avx512f"}) | AVX2, "avx2"),  # F alone: no BW/VL
        ("aarch64", frozenset({"fp", "asimd", "sve", "bf16"}), "sve"),
        ("aarch64", frozenset({"fp", "asimd"}), "neon"),
        ("riscv64", frozenset({"v"}), "portable"),
    ],
)
def test_hardware_level(arch: str, flags: frozenset[str], level: str) -> None:
    assert isa.hardware_level(arch, flags) == level


@pytest.mark.parametrize(
    ("level", "aten", "capped"),
    [
        ("avx512-bf16", "AVX512", "avx512-bf16"),
        ("avx512-bf16", "AVX2", "avx2"),
        ("avx512", "DEFAULT", "portable"),
        ("avx2", "AVX512", "avx2"),  # the cap never raises a level
        ("neon", "DEFAULT", "neon"),  # aarch64 levels are not x86 capabilities
    ],
)
def test_aten_capability_caps_the_level(level: str, aten: str, capped: str) -> None:
    assert isa._cap(level, aten) == capped


def test_bf16_gemms_are_native_only_with_bf16_hardware() -> None:
    def make(level: str, arch: str = "x86_64", flags: frozenset[str] = frozenset()) -> isa.CpuIsa:
        return isa.CpuIsa(arch, level, level, False, "AVX2", flags)

    assert make("avx512-bf16").bf16_gemms_native
    assert not make("avx512").bf16_gemms_native
    assert not make("avx2").bf16_gemms_native
    assert make("neon", "aarch64", frozenset({"bf16"})).bf16_gemms_native
    assert "bf16 emulated" in make("avx2").describe()


def test_this_process_and_an_aten_capped_child() -> None:
    here = isa.cpu_isa()
    assert here.level in isa.LEVELS and here.hw_level in isa.LEVELS
    assert isa.LEVELS.index(here.level) >= isa.LEVELS.index(here.hw_level)
    if here.arch != "x86_64":
        pytest.skip("ATEN_CPU_CAPABILITY caps x86 levels only")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    code = "from mamba_backends_cpu.isa import cpu_isa; print(cpu_isa().level)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "portable"


def test_cpu_config_keys_rows_on_the_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    from mamba_backends import tuning

    rows = {"device": "cpu", "when": {"isa": "neon"}, "config": {"decode_block_bytes": 7}}
    with tuning.override("fused_recurrent_gated_delta_rule", rows["config"], when=rows["when"]):
        fake = isa.CpuIsa("aarch64", "neon", "neon", False, "DEFAULT", frozenset())
        monkeypatch.setattr(isa, "cpu_isa", lambda: fake)
        monkeypatch.setattr("mamba_backends_cpu.tuning.cpu_isa", lambda: fake)
        got = cpu_config("fused_recurrent_gated_delta_rule", dtype="float32", K=8, V=8)
        assert got["decode_block_bytes"] == 7
        monkeypatch.undo()
        if isa.cpu_isa().level != "neon":
            got = cpu_config("fused_recurrent_gated_delta_rule", dtype="float32", K=8, V=8)
            assert got["decode_block_bytes"] != 7
