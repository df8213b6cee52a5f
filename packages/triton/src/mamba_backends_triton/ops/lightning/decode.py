"""Linear (lightning) attention decode: ``linear_decode_forward``.

Semantics and signature are the spec's (:func:`mamba_backends.reference.linear_decode_forward`,
vLLM 0.32's ``linear_decode_forward_triton``): one token per request, per head ``h`` with decay
slope ``s_h`` and cache ``kv: [D, D]`` (rows ``d`` of k/q, columns ``e`` of v)::

    kv <- exp(-s_h) * kv + outer(k, v)
    o   = q @ kv

``kv_caches: [slots, H, D, D]`` (any strides, any float dtype; computed in float32) is updated
in place at ``slot_idx: [B]``; a request whose slot is a pad (-1) or the null block (0) is
skipped: its output row is zero and no cache is written. The output is a new ``[B, H * D]``.

:func:`_linear_decode_kernel`, grid ``(B, H, cdiv(D, BLOCK_E))``: one program per request,
head and block of ``BLOCK_E`` cache columns, with the whole ``(D, BLOCK_E)`` tile in registers.
Column ``e`` of the cache only meets column ``e`` of ``v`` and ``o``, so a column tile is
exact: one read and one write of each cache byte, in the spec's order of operations (NaN/inf
land where they land in the spec). Real slots are unique (the contract), so each program reads
its tile before anything writes it. ``BLOCK_SIZE`` (vLLM's tile width) cannot change the
result and is ignored: the tile comes from the tuning tables.
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

OP = "linear_decode_forward"


@triton.jit
def _linear_decode_kernel(
    q_ptr, k_ptr, v_ptr, kv_ptr, slope_ptr, slot_ptr, o_ptr,
    H, D, num_slots,
    stride_q_b, stride_q_h, stride_q_d, stride_k_b, stride_k_h, stride_k_d,
    stride_v_b, stride_v_h, stride_v_d,
    stride_kv_slot, stride_kv_h, stride_kv_d, stride_kv_e, stride_slope,
    EVEN_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Request ``pid0``, head ``pid1``, cache columns ``pid2 * BLOCK_E + [0, BLOCK_E)``.
    ``EVEN_D``: ``D == BLOCK_D`` (no padded rows)."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    ee = tl.program_id(2).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    dd = tl.arange(0, BLOCK_D).to(tl.int64)
    e_ok = ee < D
    if EVEN_D:  # a constant mask along D
        d_ok = dd < BLOCK_D
    else:
        d_ok = dd < D
    slot = tl.load(slot_ptr + b).to(tl.int64)
    run = (slot > 0) & (slot < num_slots)
    m = tl.where(run, d_ok[:, None] & e_ok[None, :], False)
    tile = h * stride_kv_h + dd[:, None] * stride_kv_d + ee[None, :] * stride_kv_e
    kv = tl.load(kv_ptr + slot * stride_kv_slot + tile, mask=m, other=0.0).to(tl.float32)
    d_run = tl.where(run, d_ok, False)
    e_run = tl.where(run, e_ok, False)
    q = tl.load(q_ptr + b * stride_q_b + h * stride_q_h + dd * stride_q_d, mask=d_run, other=0.0)
    k = tl.load(k_ptr + b * stride_k_b + h * stride_k_h + dd * stride_k_d, mask=d_run, other=0.0)
    v = tl.load(v_ptr + b * stride_v_b + h * stride_v_h + ee * stride_v_d, mask=e_run, other=0.0)
    s = tl.load(slope_ptr + h * stride_slope).to(tl.float32)
    kv = tl.exp(-s) * kv + k.to(tl.float32)[:, None] * v.to(tl.float32)[None, :]
    if not EVEN_D:  # padded rows stay 0 (0 * inf would make them NaN)
        kv = tl.where(d_ok[:, None], kv, 0.0)
    o = tl.where(run, tl.sum(q.to(tl.float32)[:, None] * kv, axis=0), 0.0)
    tl.store(o_ptr + (b * H + h) * D + ee, o.to(o_ptr.dtype.element_ty), mask=e_ok)
    tl.store(kv_ptr + slot * stride_kv_slot + tile, kv.to(kv_ptr.dtype.element_ty), mask=m)


def _launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``TILE`` cache elements per program: ``BLOCK_E = TILE / BLOCK_D`` columns."""
    blocks = {"BLOCK_E": max(int(cfg["TILE"]) // int(feats["BLOCK_D"]), 1)}
    return blocks, launch_options(cfg)


def linear_decode_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_caches: Tensor,
    slope_rate: Tensor,
    slot_idx: Tensor,
    BLOCK_SIZE: int = 32,
) -> Tensor:
    """One decode token per request (see the module docstring).

    ``q, k, v: [B, H, 1, D]``; ``kv_caches: [slots, H, D, D]`` updated in place;
    ``slope_rate``: ``H`` slopes (any shape with ``H`` elements); ``slot_idx: [B]``.
    Returns ``[B, H * D]`` in ``q.dtype``.
    """
    B, H, D = _contract.check_linear_decode_forward_args(
        q, k, v, kv_caches, slope_rate, slot_idx, BLOCK_SIZE
    )
    check_kernel_dtypes(OP, q=q, k=k, v=v, kv_caches=kv_caches, slope_rate=slope_rate)
    o = torch.empty((B, H * D), dtype=q.dtype, device=q.device)
    if B == 0:
        return o
    slopes = slope_rate.reshape(H)
    block_d = triton.next_power_of_2(D)
    feats = {"EVEN_D": D == block_d, "BLOCK_D": block_d}
    blocks, options = _launch(launch_config(OP, q.device, D=D), feats)
    blocks["BLOCK_E"] = min(blocks["BLOCK_E"], block_d)
    grid = (B, H, triton.cdiv(D, blocks["BLOCK_E"]))
    _linear_decode_kernel[grid](
        q, k, v, kv_caches, slopes, slot_idx, o, H, D, kv_caches.shape[0],
        q.stride(0), q.stride(1), q.stride(3), k.stride(0), k.stride(1), k.stride(3),
        v.stride(0), v.stride(1), v.stride(3), *kv_caches.stride(), slopes.stride(0),
        **feats, **blocks, **options,
    )  # fmt: skip
    return o


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): MiniMax-Text-01's
# decode (bf16 q/k/v, fp32 caches and slopes, H=64, D=128, i32 slots), fp16 caches with int64
# slots, and D=96 (padded rows) with strides the JIT cannot prove divisible by 16.
_BF16 = {"q_ptr": "bf16", "k_ptr": "bf16", "v_ptr": "bf16", "kv_ptr": "fp32",
         "slope_ptr": "fp32", "slot_ptr": "i32", "o_ptr": "bf16"}  # fmt: skip
_FP16 = {**_BF16, **{k: "fp16" for k in ("q_ptr", "k_ptr", "v_ptr", "kv_ptr", "o_ptr")},
         "slot_ptr": "i64"}  # fmt: skip
_UNIT = {"stride_q_d": 1, "stride_k_d": 1, "stride_v_d": 1, "stride_kv_e": 1, "stride_slope": 1}
_DIVISIBLE = (
    "D", "stride_q_b", "stride_q_h", "stride_k_b", "stride_k_h", "stride_v_b", "stride_v_h",
    "stride_kv_slot", "stride_kv_h", "stride_kv_d",
)  # fmt: skip
_VARIANTS = (
    Variant("MiniMax bf16, fp32 cache, D128", _BF16,
            {**_UNIT, "EVEN_D": True, "BLOCK_D": 128}, _DIVISIBLE),
    Variant("fp16 cache, i64 slots, D64", _FP16,
            {**_UNIT, "EVEN_D": True, "BLOCK_D": 64}, _DIVISIBLE),
    Variant("fp16 D96 odd strides", _FP16, {**_UNIT, "EVEN_D": False, "BLOCK_D": 128}),
)  # fmt: skip

COMPILE_CHECKS = (KernelCheck(_linear_decode_kernel, OP, _VARIANTS, _launch),)
