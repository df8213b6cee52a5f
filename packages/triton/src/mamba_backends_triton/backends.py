"""Triton backends: one implementation per op, on whatever device Triton compiles for.

Declared devices and dtypes are what the kernels can honour in this process:

- on a GPU (``cuda`` covers CUDA and ROCm torch; ``xpu`` Intel's Triton): fp32, fp16, bf16
  activations and states;
- under the Triton interpreter (``TRITON_INTERPRET=1``, read when this module is imported) the
  kernels run on CPU tensors too, so ``cpu`` is declared as well; the interpreter computes
  bf16 wrongly, so only fp32 and fp16 are declared then. This is how the conformance kit runs
  the GPU code on a machine without a GPU.
"""

from __future__ import annotations

import torch

from mamba_backends.backend import MambaBackend
from mamba_backends_triton import interpreting

_INTERPRETER = interpreting()
_GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRETER_DTYPES = (torch.float32, torch.float16)


class _TritonBackend(MambaBackend):
    supported_devices = ("cuda", "xpu", "cpu") if _INTERPRETER else ("cuda", "xpu")
    supported_dtypes = _INTERPRETER_DTYPES if _INTERPRETER else _GPU_DTYPES
    supported_state_dtypes = _INTERPRETER_DTYPES if _INTERPRETER else _GPU_DTYPES
    ops_module = "mamba_backends_triton.ops"


class TritonMamba1Backend(_TritonBackend):
    """Mamba1 (``MambaMixer``): conv1d prefill/decode, ``selective_scan_fn`` and
    ``selective_state_update`` (Mamba1 form)."""

    name = "triton.mamba1"
    mamba_type = "mamba1"


class TritonMamba2Backend(_TritonBackend):
    """Mamba2 (``MambaMixer2``): conv1d prefill/decode, ``selective_state_update`` (Mamba2
    form) and ``mamba_chunk_scan_combined_varlen`` (the fused SSD kernel)."""

    name = "triton.mamba2"
    mamba_type = "mamba2"
    chunk_size = 256


class TritonShortConvBackend(_TritonBackend):
    """LFM2 short conv (``ShortConv``): ``causal_conv1d_fn`` and ``causal_conv1d_update``."""

    name = "triton.short_conv"
    mamba_type = "short_conv"


class TritonGdnBackend(_TritonBackend):
    """Gated delta net (Qwen3-Next ``GatedDeltaNet``): conv1d prefill/decode,
    ``fused_gdn_gating``, ``chunk_gated_delta_rule`` and ``fused_recurrent_gated_delta_rule``.
    Serves ``gdn`` only: the Triton ``linear_attention`` type has its own backend
    (:class:`TritonLinearAttentionBackend`), so the CPU backend's seed route
    (``also_serves``) is not needed here."""

    name = "triton.gdn"
    mamba_type = "gdn"


class TritonLinearAttentionBackend(_TritonBackend):
    """Lightning / linear attention (MiniMax-Text-01): ``lightning_attention`` and
    ``linear_decode_forward``."""

    name = "triton.linear_attention"
    mamba_type = "linear_attention"
