"""Causal depthwise conv1d over a varlen batch (prefill): ``causal_conv1d_fn``.

Semantics and signature are the spec's (:func:`mamba_backends.reference.causal_conv1d_fn`).
Per channel ``d`` and token ``t`` of a sequence whose inputs follow its ``W-1`` stored columns::

    inp = [s[0], ..., s[W-2], x[start], x[start+1], ...]
    y[t] = silu?(bias[d] + sum_k weight[d, k] * inp[t - start + k])

Two launches that touch disjoint outputs; only the second reads or writes the state slots:

1. :func:`_conv1d_fwd_kernel`, grid ``(cdiv(T, BLOCK_T), cdiv(dim, BLOCK_D))``: a program owns
   a ``(BLOCK_T, BLOCK_D)`` tile of the packed tokens, whatever sequences it spans. Each token
   finds its sequence by a binary search over ``query_start_loc`` (no host-side metadata, no
   sync) and convolves ``x`` alone, with zeros before the sequence start. It writes every token
   but the first ``W-1`` of a sequence with an initial state; tokens of skipped sequences
   (pad/null slot) and of the padded tail get zeros, as in the spec.
2. :func:`_conv1d_edge_kernel`, grid ``(B, cdiv(dim, BLOCK_D))``: per sequence, the outputs of
   those first ``W-1`` tokens (they read the stored columns), then the new state: the last
   ``W-1`` input columns (a sequence shorter than ``W-1`` keeps the tail of its old columns,
   or zeros, in front of its tokens). All of a slot's reads precede its writes (a barrier).

Offsets are int64 (tokens x strides, slots x strides). Every load is masked. The output kernel
holds no state pointers, which keeps its registers low enough for large tiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton._options import launch_options
from mamba_backends_triton.ops.conv1d._common import (
    check_kernel_dtypes,
    flag_tensor,
    skip_ids,
)

OP = "causal_conv1d_fn"


@triton.jit
def _conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, qsl_ptr, idx_ptr, init_ptr, out_ptr,
    dim, T, batch, num_slots, search_steps, pad_slot_id, null_block_id,
    stride_x_d, stride_x_t, stride_w_d, stride_w_k, stride_o_d, stride_o_t,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, HAS_INIT: tl.constexpr,
    SILU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Outputs of a token tile, x (dim, T) -> out (dim, T), from x alone (no state reads).

    Writes every token of the tile except the first W-1 of a sequence with an initial state
    (the edge kernel's); tokens of skipped sequences and of the padded tail get zeros.
    """
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok = t < T
    d_ok = d < dim
    # The sequence of each token: the last b in [0, batch) with query_start_loc[b] <= t.
    lo = tl.zeros([BLOCK_T], dtype=tl.int32)
    hi = tl.zeros([BLOCK_T], dtype=tl.int32) + batch
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        q = tl.load(qsl_ptr + mid, mask=t_ok & (mid < batch), other=0)
        below = q <= t
        lo = tl.where(below, mid, lo)
        hi = tl.where(below, hi, mid)
    start = tl.load(qsl_ptr + lo, mask=t_ok, other=0).to(tl.int64)
    end = tl.load(qsl_ptr + lo + 1, mask=t_ok, other=0).to(tl.int64)
    live = t_ok & (t >= start) & (t < end)
    if HAS_IDX:
        slot = tl.load(idx_ptr + lo, mask=live, other=-1)
        live = live & (slot != pad_slot_id) & (slot != null_block_id)
        live = live & (slot >= 0) & (slot < num_slots)
    pos = t - start  # token index within its sequence
    if HAS_INIT:
        has_init = tl.load(init_ptr + lo, mask=live, other=0) != 0
        edge = live & has_init & (pos < W - 1)
        write = t_ok & (edge == 0)
    else:
        write = t_ok

    # Addresses: the tile's origin, then offsets within the tile (all int64; computing them
    # from the origin rather than from token 0 also keeps the register count down).
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_T
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    i = tl.arange(0, BLOCK_T).to(tl.int64)
    c = tl.arange(0, BLOCK_D).to(tl.int64)
    x_tile = x_ptr + t0 * stride_x_t + d0 * stride_x_d
    x_c = c[None, :] * stride_x_d
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(W):
        shift = W - 1 - k  # this tap reads token t - shift (a compile-time constant)
        w_k = tl.load(w_ptr + d * stride_w_d + k * stride_w_k, mask=d_ok, other=0.0)
        # Before the sequence start the input is zero (no initial state) or the edge kernel's.
        tap = live & (pos >= shift)
        v = tl.load(
            x_tile + (i - shift)[:, None] * stride_x_t + x_c,
            mask=tap[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc += v.to(tl.float32) * w_k.to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    acc = tl.where(live[:, None], acc, 0.0)
    o_tile = out_ptr + t0 * stride_o_t + d0 * stride_o_d
    o_ptrs = o_tile + i[:, None] * stride_o_t + c[None, :] * stride_o_d
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=write[:, None] & d_ok[None, :])


@triton.jit
def _conv1d_edge_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, qsl_ptr, idx_ptr, init_ptr, out_ptr,
    dim, batch, num_slots, pad_slot_id, null_block_id,
    stride_x_d, stride_x_t, stride_w_d, stride_w_k,
    stride_s_slot, stride_s_d, stride_s_k, stride_o_d, stride_o_t,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, HAS_INIT: tl.constexpr,
    SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Both ends of sequence b: the outputs of its first W-1 tokens when it has an initial
    state (they read the stored columns), then its new state, the last W-1 columns of
    ``[old columns | its tokens]``. The only kernel that touches the slot."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    j = tl.arange(0, BLOCK_K)  # a column (or head token) index, W-1 of them
    d_ok = d < dim
    in_b = b < batch
    start = tl.load(qsl_ptr + b, mask=in_b, other=0).to(tl.int64)
    end = tl.load(qsl_ptr + b + 1, mask=in_b, other=0).to(tl.int64)
    n = end - start
    run = in_b & (n > 0)
    if HAS_IDX:
        slot = tl.load(idx_ptr + b, mask=in_b, other=-1).to(tl.int64)
        run = run & (slot != pad_slot_id) & (slot != null_block_id)
        run = run & (slot >= 0) & (slot < num_slots)
    else:
        slot = b.to(tl.int64)
    if HAS_INIT:
        init = run & (tl.load(init_ptr + b, mask=in_b, other=0) != 0)
    else:
        init = False
    # (tl.where, not '&': the interpreter cannot combine a scalar and a block mask with '&')
    col_ok = tl.where(run, j < W - 1, False)
    dd = d.to(tl.int64)[:, None]
    s_base = state_ptr + slot * stride_s_slot + dd * stride_s_d
    x_base = x_ptr + dd * stride_x_d
    if HAS_INIT:
        # Head token p = j of inp = [old columns | tokens]: y[p] = sum_k w[k] * inp[p + k].
        head = tl.where(init, col_ok & (j < n), False)
        acc = tl.zeros([BLOCK_D, BLOCK_K], dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[:, None]
        for k in tl.static_range(W):
            i = j + k
            from_s = head & (i < W - 1)
            from_x = head & (i >= W - 1)
            v = tl.load(
                s_base + i[None, :] * stride_s_k, mask=d_ok[:, None] & from_s[None, :], other=0.0
            ).to(tl.float32)
            tok = start + i - (W - 1)
            v += tl.load(
                x_base + tok[None, :] * stride_x_t,
                mask=d_ok[:, None] & from_x[None, :],
                other=0.0,
            ).to(tl.float32)
            w_k = tl.load(w_ptr + d * stride_w_d + k * stride_w_k, mask=d_ok, other=0.0)
            acc += v * w_k.to(tl.float32)[:, None]
        if SILU:
            acc = acc * tl.sigmoid(acc)
        o_ptrs = out_ptr + dd * stride_o_d + (start + j)[None, :] * stride_o_t
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=d_ok[:, None] & head[None, :])
    # Column j of the new state is inp[n + j]: a token when n + j >= W-1, else an old column.
    src = n + j
    from_x = col_ok & (src >= W - 1)
    from_s = tl.where(init, col_ok & (src < W - 1), False)
    tok = end - (W - 1) + j
    v = tl.load(
        x_base + tok[None, :] * stride_x_t, mask=d_ok[:, None] & from_x[None, :], other=0.0
    ).to(tl.float32)
    v += tl.load(
        s_base + src[None, :] * stride_s_k, mask=d_ok[:, None] & from_s[None, :], other=0.0
    ).to(tl.float32)
    tl.debug_barrier()  # every old column of the slot is read before any is overwritten
    tl.store(
        s_base + j[None, :] * stride_s_k,
        v.to(state_ptr.dtype.element_ty),
        mask=d_ok[:, None] & col_ok[None, :],
    )


def _fwd_launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The output kernel's blocks and launch options for a tuning config."""
    blocks = {"BLOCK_T": cfg["BLOCK_T"], "BLOCK_D": cfg["BLOCK_D"]}
    return blocks, launch_options(cfg)


def _edge_launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The edge kernel's blocks and launch options for a tuning config."""
    blocks = {"BLOCK_D": cfg["EDGE_BLOCK_D"], "BLOCK_K": triton.next_power_of_2(feats["W"] - 1)}
    return blocks, launch_options(cfg, "edge_num_warps", None)


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): vLLM's layout
# (channel-last bf16 x, fp32 states as (dim, W-1) views of (W-1, dim) rows), a contiguous fp16
# one without optional inputs, and fp32 with int64 indices.
_VLLM = {
    "x_ptr": "bf16",
    "w_ptr": "bf16",
    "bias_ptr": "bf16",
    "state_ptr": "fp32",
    "qsl_ptr": "i32",
    "idx_ptr": "i32",
    "init_ptr": "u8",
    "out_ptr": "bf16",
}
_HALF = {
    **_VLLM,
    "x_ptr": "fp16",
    "w_ptr": "fp16",
    "bias_ptr": "fp16",
    "state_ptr": "fp16",
    "out_ptr": "fp16",
    "qsl_ptr": "i64",
    "idx_ptr": "i64",
    "init_ptr": "i64",
}
_F32 = {
    **_VLLM,
    "x_ptr": "fp32",
    "w_ptr": "fp32",
    "bias_ptr": "fp32",
    "out_ptr": "fp32",
    "qsl_ptr": "i64",
    "idx_ptr": "i64",
}
_CL = {"stride_x_d": 1, "stride_s_d": 1, "stride_w_k": 1, "stride_o_d": 1}  # (T, dim) rows
_CONTIG = {"stride_x_t": 1, "stride_s_k": 1, "stride_w_k": 1, "stride_o_t": 1}  # (dim, T)


def _fwd_variant(name: str, ptrs: dict[str, str], W: int, opt: bool, unit: dict[str, int]):
    flags = {"HAS_BIAS": opt, "HAS_IDX": opt, "HAS_INIT": opt, "SILU": opt}
    return Variant(name, ptrs, {"W": W, **flags, **unit})


def _fwd_only(v: Variant) -> Variant:
    """The output kernel's share of a variant (it takes no state)."""
    consts = {k: c for k, c in v.constexprs.items() if k != "stride_s_d" and k != "stride_s_k"}
    ptrs = {k: p for k, p in v.pointers.items() if k != "state_ptr"}
    return Variant(v.name, ptrs, consts)


_VARIANTS = (
    _fwd_variant("bf16 rows, fp32 sd state, W4", _VLLM, 4, True, _CL),
    _fwd_variant("fp16 (dim, T), W2, no optionals", _HALF, 2, False, _CONTIG),
    _fwd_variant("fp32 rows, W3, int64 indices", _F32, 3, True, _CL),
)
COMPILE_CHECKS = (
    KernelCheck(_conv1d_fwd_kernel, OP, tuple(_fwd_only(v) for v in _VARIANTS), _fwd_launch),
    KernelCheck(_conv1d_edge_kernel, OP, _VARIANTS, _edge_launch),
)


def causal_conv1d_fn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    conv_states: Tensor,
    query_start_loc: Tensor,
    cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None,
    activation: str | bool | None = "silu",
    pad_slot_id: int | None = PAD_SLOT_ID,
    null_block_id: int | None = NULL_BLOCK_ID,
    block_idx_first_scheduled_token: Tensor | None = None,
    block_idx_last_scheduled_token: Tensor | None = None,
    initial_state_idx: Tensor | None = None,
    num_computed_tokens: Tensor | None = None,
    block_size_to_align: int = 0,
    metadata: object = None,
    validate_data: bool = False,
) -> Tensor:
    """Varlen prefill conv (vLLM 0.32's signature).

    x (dim, T); weight (dim, W); bias (dim,) or None; conv_states (slots, dim, >= W-1), any
    strides, updated in place; query_start_loc (B+1,); cache_indices (B,) or None (slot b);
    has_initial_state (B,) or None (no initial states). Returns out (dim, T) in x's dtype and
    layout. Columns of skipped sequences (pad/null slot) and of the padded tail past
    ``query_start_loc[-1]`` are zeros, as the spec's. ``metadata`` is ignored;
    ``validate_data=True`` also checks index values on the device (one sync).
    """
    _contract.check_not_supported(
        OP,
        block_idx_first_scheduled_token=block_idx_first_scheduled_token,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
        num_computed_tokens=num_computed_tokens,
    )
    _contract.check_causal_conv1d_fn_args(
        x, weight, bias, conv_states, query_start_loc, cache_indices, has_initial_state,
        activation, pad_slot_id, null_block_id, check_values=True if validate_data else None,
    )  # fmt: skip
    check_kernel_dtypes(OP, x=x, weight=weight, bias=bias, conv_states=conv_states)
    silu = _contract.normalize_activation(OP, activation) is not None
    dim, T = x.shape
    W = weight.shape[1]
    batch = query_start_loc.shape[0] - 1
    if batch == 0 or T == 0 or dim == 0:
        return torch.zeros_like(x)
    out = torch.empty_like(x)  # the kernel writes every element
    pad, null = skip_ids(pad_slot_id, null_block_id)
    init = flag_tensor(has_initial_state)
    idx = cache_indices
    feats = {"W": W, "HAS_IDX": idx is not None, "HAS_INIT": init is not None}
    cfg = launch_config(OP, x.device, dim=dim, width=W)
    blocks, options = _fwd_launch(cfg, feats)
    search_steps = max(batch - 1, 0).bit_length()
    grid = (triton.cdiv(T, blocks["BLOCK_T"]), triton.cdiv(dim, blocks["BLOCK_D"]))
    dummy = query_start_loc  # stands for absent optional tensors (never loaded)
    idx_arg = idx if idx is not None else dummy
    init_arg = init if init is not None else dummy
    bias_arg = bias if bias is not None else weight
    strides = (x.stride(0), x.stride(1), weight.stride(0), weight.stride(1))
    out_strides = (out.stride(0), out.stride(1))
    _conv1d_fwd_kernel[grid](
        x, weight, bias_arg, query_start_loc, idx_arg, init_arg, out,
        dim, T, batch, conv_states.shape[0], search_steps, pad, null, *strides, *out_strides,
        HAS_BIAS=bias is not None, SILU=silu, **feats, **blocks, **options,
    )  # fmt: skip
    blocks, options = _edge_launch(cfg, feats)
    _conv1d_edge_kernel[(batch, triton.cdiv(dim, blocks["BLOCK_D"]))](
        x, weight, bias_arg, conv_states, query_start_loc, idx_arg, init_arg, out,
        dim, batch, conv_states.shape[0], pad, null, *strides,
        conv_states.stride(0), conv_states.stride(1), conv_states.stride(2), *out_strides,
        HAS_BIAS=bias is not None, SILU=silu, **feats, **blocks, **options,
    )  # fmt: skip
    return out
