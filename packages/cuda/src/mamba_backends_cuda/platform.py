"""The NVIDIA CUDA platform."""

from __future__ import annotations

import torch

from mamba_backends.platform import Platform

#: The backend class path per mamba type on NVIDIA GPUs (the shared Triton kernels, with this
#: package's tuning tables). Types not listed defer to the selector (their kernels land later).
CUDA_BACKENDS: dict[str, str] = {
    "mamba1": "mamba_backends_triton.backends.TritonMamba1Backend",
    "mamba2": "mamba_backends_triton.backends.TritonMamba2Backend",
    "short_conv": "mamba_backends_triton.backends.TritonShortConvBackend",
    "gdn": "mamba_backends_triton.backends.TritonGdnBackend",
    "linear_attention": "mamba_backends_triton.backends.TritonLinearAttentionBackend",
}


class CudaPlatform(Platform):
    """NVIDIA GPUs (CUDA torch, not ROCm): serves the Triton backends listed above."""

    name = "cuda"
    device_type = "cuda"
    is_accelerator = True

    def get_mamba_backend_cls(self, mamba_type: str, selected_backend: str | None) -> str | None:
        # An explicit selection is the user's call; the selector resolves it.
        if selected_backend is not None:
            return None
        return CUDA_BACKENDS.get(mamba_type)

    def is_available(self) -> bool:
        return torch.version.hip is None and torch.cuda.is_available()

    def device_name(self) -> str:
        return torch.cuda.get_device_name() if self.is_available() else "cuda (unavailable)"
