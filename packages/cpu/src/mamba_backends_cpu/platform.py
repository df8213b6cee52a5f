"""The CPU platform."""

from __future__ import annotations

import platform as _py_platform
from pathlib import Path
from typing import Any

import torch

from mamba_backends.platform import Platform
from mamba_backends_cpu.isa import cpu_isa

#: The backend class path per mamba type on CPU. Types not listed defer to the selector.
CPU_BACKENDS: dict[str, str] = {
    "mamba1": "mamba_backends_cpu.backends.CpuMamba1Backend",
    "mamba2": "mamba_backends_cpu.backends.CpuMamba2Backend",
    "short_conv": "mamba_backends_cpu.backends.CpuShortConvBackend",
    "gdn": "mamba_backends_cpu.backends.CpuGDNBackend",
    "linear_attention": "mamba_backends_cpu.backends.CpuLinearAttentionBackend",
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _py_platform.processor() or _py_platform.machine()


class CpuPlatform(Platform):
    """Host CPU. Serves the CPU package's backends; everything else defers to the default map."""

    name = "cpu"
    device_type = "cpu"
    is_accelerator = False

    def get_mamba_backend_cls(self, mamba_type: str, selected_backend: str | None) -> str | None:
        # An explicit selection (e.g. a GDN backend for linear_attention) is the user's call.
        if selected_backend is not None:
            return None
        return CPU_BACKENDS.get(mamba_type)

    def device_name(self) -> str:
        """``AMD EPYC, ISA avx2 (...) (1 threads)``: the model, the instruction-set level the
        kernels choose their paths by (:mod:`mamba_backends_cpu.isa`), torch's threads."""
        return f"{_cpu_model()}, ISA {cpu_isa().describe()} ({torch.get_num_threads()} threads)"

    def describe(self) -> dict[str, Any]:
        isa = cpu_isa()
        return {**super().describe(), "isa": isa.level, "isa_hardware": isa.hw_level}
