"""The AMD ROCm platform (ROCm torch is detected by ``torch.version.hip``)."""

from __future__ import annotations

import torch

from mamba_backends.platform import Platform


class RocmPlatform(Platform):
    """AMD GPUs. Until the Triton kernels land, every mamba type defers to the default map."""

    name = "rocm"
    device_type = "cuda"  # ROCm torch exposes HIP devices as "cuda"
    is_accelerator = True

    def is_available(self) -> bool:
        return torch.version.hip is not None and torch.cuda.is_available()

    def device_name(self) -> str:
        return torch.cuda.get_device_name() if self.is_available() else "rocm (unavailable)"
