"""mamba-backends CUDA package: the NVIDIA platform (Triton kernels land in later work)."""

from __future__ import annotations

__version__ = "0.1.0"


def platform_path() -> str | None:
    """Entry point of group ``mamba_backends.platforms``: claims the machine when CUDA is usable."""
    import torch

    if torch.version.hip is None and torch.cuda.is_available():
        return "mamba_backends_cuda.platform.CudaPlatform"
    return None
