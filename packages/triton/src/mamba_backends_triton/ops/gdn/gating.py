"""GDN gating (``fused_gdn_gating``): the per-token, per-value-head decay and delta-rule gates.

Semantics are the spec's (:func:`mamba_backends.reference.fused_gdn_gating`, vLLM 0.32)::

    g    = -exp(A_log) * softplus(a + dt_bias)     # float32
    beta = sigmoid(b)                              # in b.dtype

with ``softplus(x) = x`` where ``beta * x > threshold`` (torch's rule) and
``log(1 + exp(beta * x)) / beta`` elsewhere, evaluated as ``max(y, 0) + log1p(exp(-|y|))``
(``y = beta * x``) so that it never overflows whatever the threshold. Everything is computed in
float32 from the inputs' values; NaN in any input gives NaN.

One program owns ``BLOCK_T`` tokens x all ``HV`` heads (``BLOCK_HV = next_pow2(HV)``), so
``A_log`` and ``dt_bias`` are loaded once per program. ``a`` and ``b`` may be strided views
(vLLM slices them out of one projection); the outputs are new contiguous ``[1, T, HV]`` tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton._options import launch_options
from mamba_backends_triton.ops.conv1d._common import check_kernel_dtypes
from mamba_backends_triton.ops.state_update.kernels import softplus

OP = "fused_gdn_gating"


@triton.jit
def _gdn_gating_kernel(
    A_log_ptr, a_ptr, b_ptr, bias_ptr, g_ptr, beta_ptr,
    T, HV, softplus_beta, threshold,
    stride_a_t, stride_a_h, stride_b_t, stride_b_h, stride_A_h, stride_bias_h,
    BLOCK_T: tl.constexpr, BLOCK_HV: tl.constexpr,
):  # fmt: skip
    """Tokens ``pid0 * BLOCK_T + [0, BLOCK_T)`` x heads ``[0, HV)``; ``g`` and ``beta`` are
    contiguous ``(T, HV)``."""
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    h = tl.arange(0, BLOCK_HV).to(tl.int64)
    h_ok = h < HV
    m = (t < T)[:, None] & h_ok[None, :]
    A_log = tl.load(A_log_ptr + h * stride_A_h, mask=h_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + h * stride_bias_h, mask=h_ok, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + t[:, None] * stride_a_t + h[None, :] * stride_a_h, mask=m, other=0.0)
    b = tl.load(b_ptr + t[:, None] * stride_b_t + h[None, :] * stride_b_h, mask=m, other=0.0)
    x = a.to(tl.float32) + bias[None, :]
    y = softplus_beta * x
    sp = tl.where(y > threshold, x, softplus(y) / softplus_beta)
    g = -tl.exp(A_log)[None, :] * sp
    s = 1.0 / (1.0 + tl.exp(-b.to(tl.float32)))
    out = t[:, None] * HV + h[None, :]
    tl.store(g_ptr + out, g, mask=m)
    tl.store(beta_ptr + out, s.to(beta_ptr.dtype.element_ty), mask=m)


def _launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``TILE`` elements per program: ``BLOCK_T = TILE / BLOCK_HV`` tokens (at least 1)."""
    blocks = {"BLOCK_T": max(int(cfg["TILE"]) // int(feats["BLOCK_HV"]), 1)}
    return blocks, launch_options(cfg)


def fused_gdn_gating(
    A_log: Tensor,
    a: Tensor,
    b: Tensor,
    dt_bias: Tensor,
    beta: float = 1.0,
    threshold: float = 20.0,
) -> tuple[Tensor, Tensor]:
    """``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``.

    ``A_log, dt_bias: [HV]``; ``a, b: [T, HV]`` (any strides). Returns ``g: [1, T, HV]``
    float32 and ``beta_output: [1, T, HV]`` in ``b.dtype``.
    """
    T, HV = _contract.check_fused_gdn_gating_args(A_log, a, b, dt_bias, beta, threshold)
    check_kernel_dtypes(OP, A_log=A_log, a=a, b=b, dt_bias=dt_bias)
    g = torch.empty((1, T, HV), dtype=torch.float32, device=a.device)
    beta_out = torch.empty((1, T, HV), dtype=b.dtype, device=b.device)
    if T == 0 or HV == 0:
        return g, beta_out
    feats = {"BLOCK_HV": triton.next_power_of_2(HV)}
    blocks, options = _launch(launch_config(OP, a.device, heads=HV), feats)
    blocks["BLOCK_T"] = min(blocks["BLOCK_T"], triton.next_power_of_2(T))
    grid = (triton.cdiv(T, blocks["BLOCK_T"]),)
    _gdn_gating_kernel[grid](
        A_log, a, b, dt_bias, g, beta_out, T, HV, float(beta), float(threshold),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), A_log.stride(0), dt_bias.stride(0),
        **feats, **blocks, **options,
    )  # fmt: skip
    return g, beta_out


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): Qwen3-Next's
# decode/prefill gating (bf16 a/b as strided views of the projection, fp32 A_log/dt_bias,
# HV=32) and fp16 inputs with HV=6 (a partial head block) and strides the JIT cannot prove
# divisible by 16.
_BF16 = {"A_log_ptr": "fp32", "a_ptr": "bf16", "b_ptr": "bf16", "bias_ptr": "fp32",
         "g_ptr": "fp32", "beta_ptr": "bf16"}  # fmt: skip
_FP16 = {**_BF16, "a_ptr": "fp16", "b_ptr": "fp16", "bias_ptr": "fp16", "beta_ptr": "fp16"}
_UNIT = {"stride_a_h": 1, "stride_b_h": 1, "stride_A_h": 1, "stride_bias_h": 1}
_VARIANTS = (
    Variant("Qwen3-Next bf16, HV32", _BF16, {**_UNIT, "BLOCK_HV": 32},
            ("HV", "stride_a_t", "stride_b_t")),
    Variant("fp16, HV6, odd strides", _FP16, {**_UNIT, "BLOCK_HV": 8}),
)  # fmt: skip

COMPILE_CHECKS = (KernelCheck(_gdn_gating_kernel, OP, _VARIANTS, _launch),)
