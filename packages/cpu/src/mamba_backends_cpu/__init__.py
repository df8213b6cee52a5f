"""mamba-backends CPU package: the CPU platform and fast PyTorch kernels."""

from __future__ import annotations

__version__ = "0.1.0"


def platform_path() -> str | None:
    """Entry point of group ``mamba_backends.platforms``: a CPU is always present."""
    return "mamba_backends_cpu.platform.CpuPlatform"
