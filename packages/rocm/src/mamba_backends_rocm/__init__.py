"""mamba-backends ROCm package: the AMD platform, wave64 tuning tables of the shared Triton
kernels, and optional vendor-native ``aiter`` ops (each a backend of its own)."""

from __future__ import annotations

__version__ = "0.1.0"


def platform_path() -> str | None:
    """Entry point of group ``mamba_backends.platforms``: claims the machine on ROCm torch."""
    import torch

    if torch.version.hip is not None and torch.cuda.is_available():
        return "mamba_backends_rocm.platform.RocmPlatform"
    return None
