"""The ops module of the aiter backends, under vLLM's op names (the contract's signatures).

Two ops run aiter's kernels, adapted to the contract at the boundary:

- ``causal_conv1d_update``: aiter's HIP kernel for the calls it covers (one window of W-1
  columns per slot, no speculative decoding, no varlen, one dtype); the null block is mapped
  to the pad slot, which aiter skips. Other calls take the Triton kernel.
- ``chunk_gated_delta_rule``: aiter's Triton-on-ROCm kernel. The contract's states are
  ``[N, HV, V, K]`` and aiter's ``[N, H, K, V]`` with one q/k head per value head, so states are
  transposed in and out and q/k repeated per value-head group (``hv // (HV // H)``).

``causal_conv1d_fn``, ``fused_gdn_gating`` and ``fused_recurrent_gated_delta_rule`` are the
shared Triton kernels (aiter's recurrent op has no state-slot indices, which vLLM's decode
needs). aiter and Triton are imported on first call, not with this module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from mamba_backends.contract import (
    check_causal_conv1d_update_args,
    check_chunk_gated_delta_rule_args,
    check_not_supported,
    normalize_activation,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_rocm.aiter import AITER_CHUNK_GDN, AITER_CONV_UPDATE, aiter_function

#: Ops that are the shared Triton kernels as they are.
TRITON_OPS = ("causal_conv1d_fn", "fused_gdn_gating", "fused_recurrent_gated_delta_rule")


def _triton_ops() -> ModuleType:
    return importlib.import_module("mamba_backends_triton.ops")


def __getattr__(name: str) -> Any:
    if name in TRITON_OPS:
        return getattr(_triton_ops(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- causal_conv1d_update -----------------------------------------------------------------


def conv_update_fits(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    conv_state_indices: Tensor | None,
    num_accepted_tokens: Tensor | None,
    query_start_loc: Tensor | None,
) -> bool:
    """Whether aiter's conv update computes exactly this call (else the Triton kernel runs).

    aiter shifts the whole ``state_len`` window, so only ``state_len == W-1`` (vLLM's layout)
    matches the contract; it has no speculative (``num_accepted_tokens``) or varlen
    (``query_start_loc``) mode, takes widths 2..4 and one dtype for x, weight and state.
    """
    W = weight.shape[1]
    dtypes = {x.dtype, conv_state.dtype, weight.dtype} | (
        {bias.dtype} if bias is not None else set()
    )
    return (
        num_accepted_tokens is None
        and query_start_loc is None
        and x.dim() in (2, 3)
        and 2 <= W <= 4
        and conv_state.shape[-1] == W - 1
        and len(dtypes) == 1
        and (conv_state_indices is None or conv_state_indices.dim() in (1, 2))
    )


def aiter_conv_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    silu: bool,
    conv_state_indices: Tensor | None,
    null_block_id: int | None,
    out: Tensor | None,
) -> Tensor:
    """aiter's conv update on a call that :func:`conv_update_fits`; returns the tensor written.

    x ``(B, dim)`` or ``(B, dim, S)``; conv_state ``(slots, dim, W-1)``, any strides, updated
    in place; conv_state_indices ``(B,)`` or ``(B, k)`` (column 0). Rows of skipped requests
    (pad or null slot) of the returned tensor are left as they were.
    """
    fn = aiter_function(AITER_CONV_UPDATE)
    target = out if out is not None else x
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    t3 = target.unsqueeze(-1) if target.dim() == 2 else target
    # aiter writes only the rows it processes: start from the target's own rows.
    buf = t3.clone(memory_format=torch.contiguous_format)
    if conv_state_indices is None:
        idx = torch.empty(0, dtype=torch.int32, device=x.device)
    else:
        idx = conv_state_indices[:, 0] if conv_state_indices.dim() == 2 else conv_state_indices
        if null_block_id is not None:  # aiter only knows the pad slot
            idx = torch.where(idx == null_block_id, torch.full_like(idx, PAD_SLOT_ID), idx)
        idx = idx.to(torch.int32).contiguous()
    b = bias if bias is not None else torch.empty(0, dtype=x.dtype, device=x.device)
    no_seqlens = torch.empty(0, dtype=torch.int32, device=x.device)  # not the circular mode
    fn(x3.contiguous(), conv_state, weight.contiguous(), b, buf, silu, no_seqlens, idx,
       PAD_SLOT_ID)  # fmt: skip
    t3.copy_(buf)
    return target


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
    """Decode conv (vLLM 0.32's signature; see the spec). aiter where the call fits, else
    the Triton kernel, which takes every argument."""
    fits = conv_update_fits(
        x, conv_state, weight, bias, conv_state_indices, num_accepted_tokens, query_start_loc
    )
    if not fits:
        return _triton_ops().causal_conv1d_update(
            x, conv_state, weight, bias, activation, conv_state_indices, num_accepted_tokens,
            query_start_loc, max_query_len, null_block_id, block_idx_last_scheduled_token,
            initial_state_idx, validate_data, out,
        )  # fmt: skip
    op = "causal_conv1d_update"
    check_not_supported(
        op,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
    )
    check_causal_conv1d_update_args(
        x, conv_state, weight, bias, activation, conv_state_indices, num_accepted_tokens,
        query_start_loc, null_block_id, out, pad_slot_id=PAD_SLOT_ID,
        check_values=True if validate_data else None,
    )  # fmt: skip
    silu = normalize_activation(op, activation) is not None
    return aiter_conv_update(x, conv_state, weight, bias, silu, conv_state_indices,
                             null_block_id, out)  # fmt: skip


# --- chunk_gated_delta_rule ----------------------------------------------------------------


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_indices: Tensor | None = None,
    chunk_offsets: Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    core_attn_out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """GDN prefill through aiter (shapes as the spec: q, k ``[B, T, H, K]``; v
    ``[B, T, HV, V]``; g, beta ``[B, T, HV]``; states ``[N, HV, V, K]``).

    Returns ``(o [B, T, HV, V] in q.dtype, final_state [N, HV, V, K] float32 or None)``.
    ``chunk_indices``/``chunk_offsets`` are a function of ``cu_seqlens`` and unused.
    """
    B, T, H, HV, K, V, N = check_chunk_gated_delta_rule_args(
        q, k, v, g, beta, scale, initial_state, cu_seqlens, core_attn_out
    )
    fn = aiter_function(AITER_CHUNK_GDN)
    group = HV // H
    if group > 1:  # aiter has one q/k head per value head
        q = q.repeat_interleave(group, dim=2)
        k = k.repeat_interleave(group, dim=2)
    h0 = None
    if initial_state is not None:
        h0 = initial_state.to(torch.float32).transpose(-1, -2).contiguous()  # [N, HV, K, V]
    o, final = fn(
        q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(),
        scale=K**-0.5 if scale is None else float(scale), initial_state=h0,
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        cu_seqlens=None if cu_seqlens is None else cu_seqlens.to(torch.long),
    )  # fmt: skip
    o = o.to(q.dtype)
    if core_attn_out is not None:
        core_attn_out.copy_(o)
        o = core_attn_out
    if not output_final_state or final is None:
        return o, None
    return o, final.to(torch.float32).transpose(-1, -2).contiguous()  # [N, HV, V, K]
