"""The AMD ROCm platform (ROCm torch is detected by ``torch.version.hip``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mamba_backends.platform import Platform
from mamba_backends_rocm._native import known_status, native_status

#: The Triton backend per mamba type on AMD GPUs: the shared kernels of
#: ``mamba-backends-triton`` with this package's wave64 tuning tables (``tuning/*.json``).
#: ``mamba2`` is served by the fused SSD kernel, which compiles without register spills on
#: gfx90a/gfx942/gfx950 for unpadded shapes (P a multiple of BLOCK_P, N a power of two: every
#: Mamba2 model). Padded P/N still spill SGPRs (a known failure of the compile check's masked
#: variants): SGPR spills go to VGPR lanes or scratch, which costs time, not correctness.
ROCM_BACKENDS: dict[str, str] = {
    "mamba1": "mamba_backends_triton.backends.TritonMamba1Backend",
    "mamba2": "mamba_backends_triton.backends.TritonMamba2Backend",
    "short_conv": "mamba_backends_triton.backends.TritonShortConvBackend",
    "gdn": "mamba_backends_triton.backends.TritonGdnBackend",
    "linear_attention": "mamba_backends_triton.backends.TritonLinearAttentionBackend",
}

#: Vendor-native backends tried before the Triton one, in order. Each is used only when its
#: ``probe`` passes (``aiter`` importable, and its ops agree with the spec on a small case).
NATIVE_BACKENDS: dict[str, tuple[str, ...]] = {
    "gdn": ("mamba_backends_rocm.aiter.backends.AiterGdnBackend",),
    "short_conv": ("mamba_backends_rocm.aiter.backends.AiterShortConvBackend",),
}


class RocmPlatform(Platform):
    """AMD GPUs: vendor-native ``aiter`` backends where they pass their probe, else Triton."""

    name = "rocm"
    device_type = "cuda"  # ROCm torch exposes HIP devices as "cuda"
    is_accelerator = True
    #: The device the vendor-native probes run on.
    probe_device: ClassVar[str] = "cuda"

    def get_mamba_backend_cls(self, mamba_type: str, selected_backend: str | None) -> str | None:
        # An explicit selection is the user's call; the selector resolves it.
        if selected_backend is not None:
            return None
        for path in NATIVE_BACKENDS.get(mamba_type, ()):
            if native_status(path, self.probe_device) is None:
                return path
        return ROCM_BACKENDS.get(mamba_type)

    def is_available(self) -> bool:
        return torch.version.hip is not None and torch.cuda.is_available()

    def device_name(self) -> str:
        return torch.cuda.get_device_name() if self.is_available() else "rocm (unavailable)"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vendor_native": known_status() or "not probed yet"}
