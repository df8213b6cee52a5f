"""Causal depthwise conv1d decode step: ``causal_conv1d_update``.

Semantics and signature are the spec's (:func:`mamba_backends.reference.causal_conv1d_update`):
single-token ``(B, dim)``, multi-token ``(B, dim, S)`` and varlen ``(T, dim)`` with
``query_start_loc``; slots through ``conv_state_indices`` (1-D, or 2-D whose column 0 is the
slot); speculative decoding through ``num_accepted_tokens``; the result goes to ``out`` or, in
place, into ``x``.

One program per (request, channel block), grid ``(B, cdiv(dim, BLOCK_D))``. It loads the
request's ``W-1`` window columns into registers, then walks its tokens: each step loads one
input column, shifts it into the window, and stores one output column. Every column of the slot
is read before any is written (a barrier separates them), and each input column is read before
its output overwrites it, so ``out`` may be ``x``. Without ``num_accepted_tokens`` the final
window becomes columns ``[0, W-1)``; with it the slot's columns ``[0, W-2+S)`` become the window
minus its oldest column followed by the ``S`` inputs (written as they are read).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import triton
import triton.language as tl
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant, blocks_and_options
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton.ops.conv1d._common import check_kernel_dtypes, skip_ids

OP = "causal_conv1d_update"


@triton.jit
def _conv1d_update_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, idx_ptr, accepted_ptr, qsl_ptr, out_ptr,
    dim, batch, seqlen, num_slots, pad_slot_id, null_block_id,
    stride_x_b, stride_x_t, stride_x_d, stride_w_d, stride_w_k,
    stride_s_slot, stride_s_d, stride_s_k, stride_idx_b,
    stride_o_b, stride_o_t, stride_o_d,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SPEC: tl.constexpr,
    VARLEN: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Request b, channels of block 1: x tokens (S, dim) -> out tokens, state columns updated."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    in_b = b < batch
    b64 = b.to(tl.int64)
    if VARLEN:
        first_tok = tl.load(qsl_ptr + b, mask=in_b, other=0).to(tl.int64)
        n_tok = tl.load(qsl_ptr + b + 1, mask=in_b, other=0).to(tl.int64) - first_tok
    else:
        first_tok = b64 * 0
        n_tok = b64 * 0 + seqlen
    if HAS_IDX:
        slot = tl.load(idx_ptr + b64 * stride_idx_b, mask=in_b, other=-1).to(tl.int64)
        run = in_b & (slot != pad_slot_id) & (slot != null_block_id)
        run = run & (slot >= 0) & (slot < num_slots)
    else:
        slot = b64
        run = in_b
    run = run & (n_tok > 0)
    n_tok = tl.where(run, n_tok, 0)
    if SPEC:
        col0 = tl.load(accepted_ptr + b, mask=run, other=1).to(tl.int64) - 1
    else:
        col0 = b64 * 0
    m = tl.where(run, d_ok, False)  # (the interpreter cannot '&' a scalar and a block mask)
    dd = d.to(tl.int64)
    s_ptrs = state_ptr + slot * stride_s_slot + dd * stride_s_d
    # The window inp[0 .. W-2] (oldest first); c1, c2 exist only for W >= 3, W >= 4.
    c0 = tl.load(s_ptrs + col0 * stride_s_k, mask=m, other=0.0).to(tl.float32)
    c1 = tl.load(s_ptrs + (col0 + 1) * stride_s_k, mask=m & (W >= 3), other=0.0).to(tl.float32)
    c2 = tl.load(s_ptrs + (col0 + 2) * stride_s_k, mask=m & (W >= 4), other=0.0).to(tl.float32)
    w0 = tl.load(w_ptr + d * stride_w_d, mask=d_ok, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + d * stride_w_d + stride_w_k, mask=d_ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + d * stride_w_d + 2 * stride_w_k, mask=d_ok & (W >= 3), other=0.0)
    w3 = tl.load(w_ptr + d * stride_w_d + 3 * stride_w_k, mask=d_ok & (W >= 4), other=0.0)
    w2 = w2.to(tl.float32)
    w3 = w3.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    tl.debug_barrier()  # the window is read before any column of the slot is written
    if SPEC:
        # Columns [0, W-2) become the window minus its oldest column.
        if W >= 3:
            tl.store(s_ptrs, c1.to(state_ptr.dtype.element_ty), mask=m)
        if W >= 4:
            tl.store(s_ptrs + stride_s_k, c2.to(state_ptr.dtype.element_ty), mask=m)
    x_row = x_ptr + b64 * stride_x_b + first_tok * stride_x_t + dd * stride_x_d
    o_row = out_ptr + b64 * stride_o_b + first_tok * stride_o_t + dd * stride_o_d
    for s in range(n_tok):
        xs = tl.load(x_row + s * stride_x_t, mask=m, other=0.0).to(tl.float32)
        if W == 2:
            y = bias + w0 * c0 + w1 * xs
            c0 = xs
        elif W == 3:
            y = bias + w0 * c0 + w1 * c1 + w2 * xs
            c0 = c1
            c1 = xs
        else:
            y = bias + w0 * c0 + w1 * c1 + w2 * c2 + w3 * xs
            c0 = c1
            c1 = c2
            c2 = xs
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(o_row + s * stride_o_t, y.to(out_ptr.dtype.element_ty), mask=m)
        if SPEC:
            tl.store(s_ptrs + (W - 2 + s) * stride_s_k, xs.to(state_ptr.dtype.element_ty), mask=m)
    if not SPEC:
        # Columns [0, W-1) become the last W-1 inputs of [window | tokens].
        tl.store(s_ptrs, c0.to(state_ptr.dtype.element_ty), mask=m)
        if W >= 3:
            tl.store(s_ptrs + stride_s_k, c1.to(state_ptr.dtype.element_ty), mask=m)
        if W >= 4:
            tl.store(s_ptrs + 2 * stride_s_k, c2.to(state_ptr.dtype.element_ty), mask=m)


def _launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    return blocks_and_options(cfg, feats)


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): vLLM's decode
# (bf16 (B, dim) rows, fp32 states as (dim, W-1) views), speculative varlen fp16 with 2-D
# indices, and fp32 multi-token (B, dim, S) without optional inputs.
_DECODE = {
    "x_ptr": "bf16",
    "w_ptr": "bf16",
    "bias_ptr": "bf16",
    "state_ptr": "fp32",
    "idx_ptr": "i32",
    "accepted_ptr": "i32",
    "qsl_ptr": "i32",
    "out_ptr": "bf16",
}
_SPEC = {
    **_DECODE,
    "x_ptr": "fp16",
    "w_ptr": "fp16",
    "bias_ptr": "fp16",
    "state_ptr": "fp16",
    "out_ptr": "fp16",
}
_MULTI = {  # no indices, offsets or accepted counts: their dummies are x (fp32)
    **_DECODE,
    "x_ptr": "fp32",
    "w_ptr": "fp32",
    "bias_ptr": "fp32",
    "out_ptr": "fp32",
    "idx_ptr": "fp32",
    "accepted_ptr": "fp32",
    "qsl_ptr": "fp32",
}
_UNIT = {"stride_x_d": 1, "stride_o_d": 1, "stride_s_d": 1, "stride_w_k": 1}


def _variant(name: str, ptrs: dict[str, str], W: int, flags: str, **unit: int) -> Variant:
    """``flags``: the letters of the features on (b: bias, i: indices, s: speculative,
    v: varlen, a: silu activation)."""
    feats = {f: c in flags for f, c in (("HAS_BIAS", "b"), ("HAS_IDX", "i"), ("SPEC", "s"),
                                         ("VARLEN", "v"), ("SILU", "a"))}  # fmt: skip
    return Variant(name, ptrs, {"W": W, **feats, **_UNIT, **unit})


COMPILE_CHECKS = (
    KernelCheck(
        _conv1d_update_kernel,
        OP,
        (
            _variant("bf16 rows, fp32 sd state, W4", _DECODE, 4, "bia", stride_idx_b=1),
            _variant("fp16 spec varlen, 2-D idx, W3", _SPEC, 3, "isv"),
            _variant("fp32 (B, dim, S), W2, no optionals", _MULTI, 2, "a"),
        ),
        _launch,
    ),
)


def causal_conv1d_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: bool | str | None = None,
    conv_state_indices: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None,
    query_start_loc: Tensor | None = None,
    max_query_len: int = -1,
    null_block_id: int | None = NULL_BLOCK_ID,
    block_idx_last_scheduled_token: Tensor | None = None,
    initial_state_idx: Tensor | None = None,
    validate_data: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Decode conv (vLLM 0.32's signature).

    x (B, dim), (B, dim, S), or (T, dim) with query_start_loc (B+1,); conv_state
    (slots, dim, state_len), any strides, updated in place; weight (dim, W), W in 2..4; bias
    (dim,); conv_state_indices (B,) or (B, k); num_accepted_tokens (B,); out like x. Returns
    the tensor written (out, else x). Rows of skipped requests (pad/null slot, no tokens) are
    left untouched. ``max_query_len`` is a hint and unused; ``validate_data=True`` also checks
    index values on the device (one sync).
    """
    _contract.check_not_supported(
        OP,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
    )
    _contract.check_causal_conv1d_update_args(
        x, conv_state, weight, bias, activation, conv_state_indices, num_accepted_tokens,
        query_start_loc, null_block_id, out, pad_slot_id=PAD_SLOT_ID,
        check_values=True if validate_data else None,
    )  # fmt: skip
    check_kernel_dtypes(OP, x=x, weight=weight, bias=bias, conv_state=conv_state, out=out)
    W = weight.shape[1]
    if W > 4:
        raise NotImplementedError(f"{OP}: argument 'weight' has width {W}; the kernel takes 2..4")
    silu = _contract.normalize_activation(OP, activation) is not None
    target = out if out is not None else x
    dim = x.shape[1]
    varlen = query_start_loc is not None
    if varlen:
        assert query_start_loc is not None
        batch, seqlen = query_start_loc.shape[0] - 1, 0
        stride_x = (0, x.stride(0), x.stride(1))
        stride_o = (0, target.stride(0), target.stride(1))
    elif x.dim() == 2:
        batch, seqlen = x.shape[0], 1
        stride_x = (x.stride(0), 0, x.stride(1))
        stride_o = (target.stride(0), 0, target.stride(1))
    else:
        batch, seqlen = x.shape[0], x.shape[2]
        stride_x = (x.stride(0), x.stride(2), x.stride(1))
        stride_o = (target.stride(0), target.stride(2), target.stride(1))
    if batch == 0 or dim == 0 or (not varlen and seqlen == 0):
        return target
    pad, null = skip_ids(PAD_SLOT_ID, null_block_id)
    idx = conv_state_indices
    feats = {"W": W, "HAS_IDX": idx is not None, "SPEC": num_accepted_tokens is not None}
    feats.update(VARLEN=varlen, HAS_BIAS=bias is not None, SILU=silu)
    blocks, options = _launch(launch_config(OP, x.device, dim=dim, width=W), feats)
    dummy = query_start_loc if query_start_loc is not None else (idx if idx is not None else x)
    _conv1d_update_kernel[(batch, triton.cdiv(dim, blocks["BLOCK_D"]))](
        x, weight, bias if bias is not None else weight, conv_state,
        idx if idx is not None else dummy,
        num_accepted_tokens if num_accepted_tokens is not None else dummy,
        query_start_loc if query_start_loc is not None else dummy, target,
        dim, batch, seqlen, conv_state.shape[0], pad, null,
        *stride_x, weight.stride(0), weight.stride(1),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        idx.stride(0) if idx is not None else 0, *stride_o,
        **feats, **blocks, **options,
    )  # fmt: skip
    return target
