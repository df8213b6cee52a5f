"""Spec: causal depthwise conv1d, prefill (varlen) and decode, with vLLM 0.32's signatures.

Both ops compute, per channel ``d`` and token ``t`` of a sequence whose inputs are preceded by
its ``W-1`` stored columns ``s[0..W-2]`` (oldest first)::

    inp = [s[0], ..., s[W-2], x[0], x[1], ...]
    y[t] = bias[d] + sum_k weight[d, k] * inp[t + k]        (k = 0..W-1)
    y[t] = silu(y[t])                                        if activation is "silu"/"swish"/True

and leave in the state slot the last ``W-1`` columns of ``inp`` (the conv state holds ``W-1``
columns, oldest first; HF's cache holds ``W``). Everything is computed in float64; outputs are
cast to ``x``'s dtype and states to the state tensor's dtype.

``causal_conv1d_fn(x, weight, bias, conv_states, query_start_loc, cache_indices=None,
has_initial_state=None, activation="silu", pad_slot_id=PAD_SLOT_ID, null_block_id=NULL_BLOCK_ID,
block_idx_first_scheduled_token=None, block_idx_last_scheduled_token=None,
initial_state_idx=None, num_computed_tokens=None, block_size_to_align=0, metadata=None,
validate_data=False) -> out``

- ``x``: ``(dim, T)``, the varlen batch packed along tokens (vLLM hands a channel-last view);
- ``weight``: ``(dim, W)``; ``bias``: ``(dim,)`` or None;
- ``conv_states``: ``(slots, dim, >= W-1)``, any strides (vLLM's is a ``(dim, W-1)`` view of a
  ``(W-1, dim)`` buffer); columns ``[0, W-1)`` are read and written in place;
- ``query_start_loc``: ``(B+1,)`` token offsets; ``cache_indices``: ``(B,)`` slot per sequence
  (default: slot ``b``); ``has_initial_state``: ``(B,)`` bool (default: all False);
- returns ``out``: ``(dim, T)`` in ``x``'s dtype, a new tensor with ``x``'s strides.

A sequence whose slot in ``cache_indices`` is ``pad_slot_id`` or ``null_block_id`` (``None``
disables it), or that has no tokens, is skipped: its state is not read or written and its
output columns are zero here (vLLM leaves them uninitialised, so callers must not read them).
A sequence without initial state starts from zero columns, and its slot is **never read**
(vLLM reuses freed blocks: the slot may hold anything, NaN included, and none of it may reach
an output or a state); if it is shorter than ``W-1`` tokens, its new state keeps those leading
zeros (or initial-state columns) in front of its tokens. Zero-length sequences (anywhere in the
batch, every one included) and a padded tail (``query_start_loc[-1] < T``: zero output columns)
are legal. Every state is read before any is written. NaN and inf in the inputs propagate as
the float64 formulas give them (``silu(-inf)`` is NaN, as torch computes it); the zero columns of
skipped sequences and of the tail stay zero whatever ``x`` holds there.

``causal_conv1d_update(x, conv_state, weight, bias=None, activation=None,
conv_state_indices=None, num_accepted_tokens=None, query_start_loc=None, max_query_len=-1,
null_block_id=NULL_BLOCK_ID, block_idx_last_scheduled_token=None, initial_state_idx=None,
validate_data=False, out=None) -> out``

- ``x``: ``(B, dim)`` one token each, ``(B, dim, S)`` ``S`` tokens each, or ``(T, dim)`` packed
  with ``query_start_loc`` ``(B+1,)`` (varlen decode; needs ``conv_state_indices``);
- ``conv_state``: ``(slots, dim, state_len)``, ``state_len >= W-1``, any strides;
- ``conv_state_indices``: ``(B,)`` or ``(B, k)`` (column 0 is the request's slot);
- ``num_accepted_tokens``: ``(B,)``, speculative decoding. The state then holds
  ``W-2+S`` columns per request: the request's window is columns
  ``[a-1, a-1+W-1)`` (``a`` = accepted tokens of the previous step), and afterwards columns
  ``[0, W-2+S)`` hold ``inp[1:]`` (the window minus its oldest column, then all ``S`` inputs),
  so that the next step can pick the window that ends at whichever draft was accepted.
  Without it, columns ``[0, W-1)`` are the window and become ``inp[-(W-1):]``;
- ``out``: same shape and dtype as ``x``; when omitted the result is written into ``x`` (in
  place, as vLLM documents). Returns the tensor written. Skipped requests (pad/null slot in
  ``conv_state_indices``, or no tokens) leave their rows of it untouched.
- ``max_query_len`` and ``validate_data`` are launch hints; the spec validates always.
  (vLLM 0.32's Triton kernel, given ``query_start_loc`` without ``num_accepted_tokens``,
  shrinks the written window of a request shorter than ``max_query_len``; vLLM only uses
  ``query_start_loc`` with speculative decoding. The spec writes the last ``W-1`` inputs.)

Prefix-caching (APC) arguments (``block_idx_*``, ``initial_state_idx``, ``num_computed_tokens``)
raise ``NotImplementedError``; ``metadata`` (precomputed launch grid) is ignored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import (
    check_causal_conv1d_fn_args,
    check_causal_conv1d_update_args,
    check_not_supported,
    normalize_activation,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

F64 = torch.float64


def _is_skipped(slot: int, pad_slot_id: int | None, null_block_id: int | None) -> bool:
    return (pad_slot_id is not None and slot == pad_slot_id) or (
        null_block_id is not None and slot == null_block_id
    )


def _conv(inp: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    """Valid (no padding) depthwise conv: inp (dim, W-1+S) -> y (dim, S), all float64."""
    dim, W = weight.shape
    S = inp.shape[1] - (W - 1)
    y = torch.zeros(dim, S, dtype=F64, device=inp.device)
    for t in range(S):
        for k in range(W):
            y[:, t] += weight[:, k] * inp[:, t + k]
    if bias is not None:
        y += bias[:, None]
    if silu:
        y = F.silu(y)
    return y


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
    metadata: Any = None,
    validate_data: bool = False,
) -> Tensor:
    """Varlen prefill conv; see the module docstring for shapes and semantics."""
    op = "causal_conv1d_fn"
    check_not_supported(
        op,
        block_idx_first_scheduled_token=block_idx_first_scheduled_token,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
        num_computed_tokens=num_computed_tokens,
    )
    check_causal_conv1d_fn_args(
        x, weight, bias, conv_states, query_start_loc, cache_indices, has_initial_state,
        activation, pad_slot_id, null_block_id, check_values=True,
    )  # fmt: skip
    silu = normalize_activation(op, activation) is not None
    dim, W = weight.shape
    qsl = [int(v) for v in query_start_loc.tolist()]
    slots = [int(v) for v in cache_indices.tolist()] if cache_indices is not None else None
    has_init = (
        [bool(v) for v in has_initial_state.tolist()] if has_initial_state is not None else None
    )
    w = weight.to(F64)
    b64 = bias.to(F64) if bias is not None else None
    out = torch.zeros(x.shape, dtype=F64, device=x.device)
    new_states: list[tuple[int, Tensor]] = []
    for b in range(len(qsl) - 1):
        start, end = qsl[b], qsl[b + 1]
        slot = slots[b] if slots is not None else b
        if end == start or (slots is not None and _is_skipped(slot, pad_slot_id, null_block_id)):
            continue
        if has_init is not None and has_init[b]:
            init = conv_states[slot, :, : W - 1].to(F64)
        else:
            init = torch.zeros(dim, W - 1, dtype=F64, device=x.device)
        inp = torch.cat([init, x[:, start:end].to(F64)], dim=1)
        out[:, start:end] = _conv(inp, w, b64, silu)
        new_states.append((slot, inp[:, -(W - 1) :]))
    for slot, cols in new_states:
        conv_states[slot, :, : W - 1] = cols.to(conv_states.dtype)
    # Like vLLM's empty_like(x): the result keeps x's layout (channel-last stays channel-last,
    # so callers' ``.transpose(0, 1)`` and ``.view`` of the result work as with vLLM's op).
    result = torch.zeros_like(x)
    result.copy_(out)
    return result


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
    """Decode conv (single, multi-token, varlen, speculative); see the module docstring."""
    op = "causal_conv1d_update"
    check_not_supported(
        op,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
    )
    check_causal_conv1d_update_args(
        x, conv_state, weight, bias, activation, conv_state_indices, num_accepted_tokens,
        query_start_loc, null_block_id, out, pad_slot_id=PAD_SLOT_ID, check_values=True,
    )  # fmt: skip
    silu = normalize_activation(op, activation) is not None
    W = weight.shape[1]
    target = out if out is not None else x
    # Per request: the (dim, S) view of its inputs in x and of its outputs in target.
    views: list[tuple[Tensor, Tensor]] = []
    if query_start_loc is not None:
        qsl = [int(v) for v in query_start_loc.tolist()]
        for b in range(len(qsl) - 1):
            views.append((x[qsl[b] : qsl[b + 1]].T, target[qsl[b] : qsl[b + 1]].T))
    elif x.dim() == 2:
        views = [(x[b][:, None], target[b][:, None]) for b in range(x.shape[0])]
    else:
        views = [(x[b], target[b]) for b in range(x.shape[0])]
    if conv_state_indices is not None:
        col0 = conv_state_indices if conv_state_indices.dim() == 1 else conv_state_indices[:, 0]
        slots = [int(v) for v in col0.tolist()]
    else:
        slots = list(range(len(views)))
    accepted = num_accepted_tokens.tolist() if num_accepted_tokens is not None else None
    w = weight.to(F64)
    b64 = bias.to(F64) if bias is not None else None
    results: list[tuple[Tensor, Tensor, int, int, Tensor]] = []
    for b, (xs, ys) in enumerate(views):
        slot, S = slots[b], xs.shape[1]
        skipped = conv_state_indices is not None and _is_skipped(slot, PAD_SLOT_ID, null_block_id)
        if S == 0 or skipped:
            continue
        first = int(accepted[b]) - 1 if accepted is not None else 0
        window = conv_state[slot, :, first : first + W - 1].to(F64)
        inp = torch.cat([window, xs.to(F64)], dim=1)
        y = _conv(inp, w, b64, silu)
        new_cols = inp[:, 1:] if accepted is not None else inp[:, -(W - 1) :]
        results.append((ys, y, slot, new_cols.shape[1], new_cols))
    for ys, y, slot, ncols, new_cols in results:
        conv_state[slot, :, :ncols] = new_cols.to(conv_state.dtype)
        ys.copy_(y.to(ys.dtype))
    return target
