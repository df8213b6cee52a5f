"""mamba-backends XPU package: the Intel platform (torch.xpu + Triton-XPU) and Xe tuning tables
of the shared Triton kernels."""

from __future__ import annotations

__version__ = "0.1.0"


def platform_path() -> str | None:
    """Entry point of group ``mamba_backends.platforms``: claims the machine when XPU is usable."""
    import torch

    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "mamba_backends_xpu.platform.XpuPlatform"
    return None
