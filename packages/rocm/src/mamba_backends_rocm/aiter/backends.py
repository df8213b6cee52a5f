"""The aiter backends: each is used only where its probe passes (see :mod:`.probe`)."""

from __future__ import annotations

import torch

from mamba_backends.backend import MambaBackend

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _AiterBackend(MambaBackend):
    supported_devices = ("cuda",)  # ROCm torch's HIP devices
    supported_dtypes = _DTYPES
    supported_state_dtypes = _DTYPES
    ops_module = "mamba_backends_rocm.aiter.ops"


class AiterShortConvBackend(_AiterBackend):
    """LFM2 short conv: aiter's HIP ``causal_conv1d_update`` for decode, Triton for prefill."""

    name = "rocm.aiter.short_conv"
    mamba_type = "short_conv"

    @classmethod
    def probe(cls, device: str) -> str | None:
        """None when aiter's conv update agrees with the spec on ``device``, else why not."""
        from mamba_backends_rocm.aiter.probe import probe_conv_update

        return probe_conv_update(device)


class AiterGdnBackend(_AiterBackend):
    """GDN (Qwen3-Next): aiter's ``chunk_gated_delta_rule`` for prefill and HIP conv update;
    conv prefill, gating and the recurrent decode are the Triton kernels (aiter's recurrent op
    has no state-slot indices)."""

    name = "rocm.aiter.gdn"
    mamba_type = "gdn"

    @classmethod
    def probe(cls, device: str) -> str | None:
        """None when both aiter ops agree with the spec on ``device``, else why not."""
        from mamba_backends_rocm.aiter.probe import probe_chunk_gdn, probe_conv_update

        return probe_conv_update(device) or probe_chunk_gdn(device)
