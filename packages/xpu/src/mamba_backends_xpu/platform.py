"""The Intel XPU platform (``torch.xpu``; IPEX is not required)."""

from __future__ import annotations

import torch

from mamba_backends.platform import Platform


class XpuPlatform(Platform):
    """Intel GPUs. Until the Triton-XPU kernels land, every mamba type defers to the default map."""

    name = "xpu"
    device_type = "xpu"
    is_accelerator = True

    def is_available(self) -> bool:
        xpu = getattr(torch, "xpu", None)
        return bool(xpu is not None and xpu.is_available())

    def device_name(self) -> str:
        return torch.xpu.get_device_name() if self.is_available() else "xpu (unavailable)"
