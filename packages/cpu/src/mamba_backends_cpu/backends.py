"""CPU backends: fast PyTorch kernels (chunked matmuls, vectorised decode, in-place states)."""

from __future__ import annotations

import torch

from mamba_backends.backend import MambaBackend


class _CpuBackend(MambaBackend):
    supported_devices = ("cpu",)
    supported_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    supported_state_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    ops_module = "mamba_backends_cpu.ops"
    pytorch_path_env = {"MAMBA_BACKENDS_CPU_NATIVE": "0"}  # read at every call


class CpuMamba1Backend(_CpuBackend):
    """Mamba1 (``MambaMixer``) on CPU."""

    name = "cpu.mamba1"
    mamba_type = "mamba1"


class CpuMamba2Backend(_CpuBackend):
    """Mamba2 (``MambaMixer2``) on CPU."""

    name = "cpu.mamba2"
    mamba_type = "mamba2"
    chunk_size = 256


class CpuShortConvBackend(_CpuBackend):
    """LFM2 short conv (``ShortConv``) on CPU."""

    name = "cpu.short_conv"
    mamba_type = "short_conv"


class CpuGDNBackend(_CpuBackend):
    """Gated delta net (Qwen3-Next) on CPU, fp32 included."""

    name = "cpu.gdn"
    mamba_type = "gdn"
    also_serves = ("linear_attention",)  # the seed's route (selected for linear_attention)
    chunk_size = 64


class CpuLinearAttentionBackend(_CpuBackend):
    """Lightning / linear attention on CPU."""

    name = "cpu.linear_attention"
    mamba_type = "linear_attention"
