"""The CPU's instruction-set level, as the kernels choose their paths by it.

:func:`cpu_isa` reads the CPU's feature flags once (``/proc/cpuinfo``, else the platform
name) and caps them by what PyTorch's own kernels may use (``ATEN_CPU_CAPABILITY``, through
``torch.backends.cpu.get_cpu_capability()``): with ``ATEN_CPU_CAPABILITY=avx2`` an AVX-512
machine is treated as the AVX2 machine it then behaves like. Levels, best first:

========================  ========================================================
``avx512-bf16``           AVX-512 F/BW/VL with AVX512-BF16 (``amx`` noted beside)
``avx512``                AVX-512 F/BW/VL, bf16 emulated
``avx2``                  AVX2 + FMA (x86-64-v3)
``sve`` / ``neon``        aarch64 with SVE / Advanced SIMD only
``portable``              anything else: plain C and PyTorch
========================  ========================================================

The level is a tuning key: :func:`mamba_backends_cpu.tuning.cpu_config` adds ``isa=<level>``
to every CPU lookup, so per-ISA choices (bf16 or fp32 products, native kernel or PyTorch
path) are rows of the JSON tables, not branches in code. ``bf16_gemms_native`` says whether
bf16 matrix products run in hardware: where they are emulated, the ops compute in fp32.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: The levels, best first (the order of :attr:`CpuIsa.level` comparisons).
LEVELS = ("avx512-bf16", "avx512", "avx2", "sve", "neon", "portable")
#: ``torch.backends.cpu.get_cpu_capability()`` value -> the best level it allows (x86).
_ATEN_CAP = {"AVX512": "avx512-bf16", "AVX2": "avx2", "DEFAULT": "portable"}


@dataclass(frozen=True)
class CpuIsa:
    """What this process may use. ``level``: one of :data:`LEVELS`; ``hw_level``: the CPU's
    own level before the PyTorch cap; ``amx``: AMX tiles (bf16) present; ``aten``: torch's
    capability string; ``bf16_gemms_native``: bf16 products in hardware at this level."""

    arch: str
    level: str
    hw_level: str
    amx: bool
    aten: str
    flags: frozenset[str]

    @property
    def bf16_gemms_native(self) -> bool:
        return self.level == "avx512-bf16" or (
            self.arch == "aarch64" and "bf16" in self.flags and self.level in ("sve", "neon")
        )

    def describe(self) -> str:
        """``avx2 (AVX2+FMA; hardware avx512-bf16, capped by ATEN_CPU_CAPABILITY)``-style."""
        extra = []
        if self.amx and self.level == "avx512-bf16":
            extra.append("AMX")
        extra.append(f"torch {self.aten}")
        if self.hw_level != self.level:
            extra.append(f"hardware {self.hw_level}, capped by ATEN_CPU_CAPABILITY")
        if not self.bf16_gemms_native:
            extra.append("bf16 emulated: fp32 compute")
        return f"{self.level} ({self.arch}; {', '.join(extra)})"


def _flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def hardware_level(arch: str, flags: frozenset[str]) -> str:
    """The level of a CPU with these ``/proc/cpuinfo`` flags (no PyTorch cap)."""
    if arch in ("x86_64", "amd64"):
        if {"avx512f", "avx512bw", "avx512vl"} <= flags:
            return "avx512-bf16" if "avx512_bf16" in flags else "avx512"
        if {"avx2", "fma"} <= flags:
            return "avx2"
        return "portable"
    if arch in ("aarch64", "arm64"):
        if "sve" in flags:
            return "sve"
        return "neon" if ("asimd" in flags or not flags) else "portable"
    return "portable"


def _cap(level: str, aten: str) -> str:
    """``level`` lowered to what torch's capability allows (x86 only)."""
    best = _ATEN_CAP.get(aten.upper())
    if best is None or level not in LEVELS[:3]:
        return level
    return LEVELS[max(LEVELS.index(level), LEVELS.index(best))]


@functools.lru_cache(maxsize=1)
def cpu_isa() -> CpuIsa:
    """This process's :class:`CpuIsa` (computed once; :func:`reset` forgets it)."""
    arch = platform.machine().lower()
    flags = _flags()
    hw = hardware_level(arch, flags)
    try:
        aten = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        aten = os.environ.get("ATEN_CPU_CAPABILITY", "unknown")
    isa = CpuIsa(
        arch=arch,
        level=_cap(hw, aten),
        hw_level=hw,
        amx="amx_bf16" in flags,
        aten=aten,
        flags=flags,
    )
    logger.debug("mamba_backends_cpu: CPU ISA %s", isa.describe())
    return isa


def reset() -> None:
    """Forget the cached :func:`cpu_isa` (tests that change ``ATEN_CPU_CAPABILITY``)."""
    cpu_isa.cache_clear()
