"""The NVIDIA CUDA platform."""

from __future__ import annotations

import torch

from mamba_backends.platform import Platform


class CudaPlatform(Platform):
    """NVIDIA GPUs. Until the Triton kernels land, every mamba type defers to the default map."""

    name = "cuda"
    device_type = "cuda"
    is_accelerator = True

    def is_available(self) -> bool:
        return torch.version.hip is None and torch.cuda.is_available()

    def device_name(self) -> str:
        return torch.cuda.get_device_name() if self.is_available() else "cuda (unavailable)"
