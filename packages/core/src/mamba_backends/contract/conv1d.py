"""Contract of the causal conv1d ops (``causal_conv1d_fn``, ``causal_conv1d_update``).

LFM2's short conv calls the same two ops, so it shares these checks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract.generic import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_no_aliases,
    check_offsets,
    check_optional_vector,
    check_sequence_slots,
    check_slot_indices,
    check_tensor,
    check_writable,
    fail,
    normalize_activation,
    values_enabled,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID


def _check_weights_and_state(
    op: str, dim: int, weight: Tensor, bias: Tensor | None, state_name: str, state: Tensor,
    dev: torch.device,
) -> int:  # fmt: skip
    """weight (dim, W >= 2), bias (dim,), state (slots, dim, >= W-1) writable; returns W."""
    check_tensor(op, "weight", weight, shape=(dim, None), dtypes=FLOAT_DTYPES, device=dev)
    width = weight.shape[1]
    if width < 2:
        raise fail(op, "weight", f"width must be >= 2, got {width}")
    check_optional_vector(op, "bias", bias, dim, dev)
    check_tensor(op, state_name, state, ndim=3, dtypes=FLOAT_DTYPES, device=dev)
    if state.shape[1] != dim or state.shape[2] < width - 1:
        want = f"(slots, {dim}, >= {width - 1})"
        raise fail(op, state_name, f"must have shape {want}, got {tuple(state.shape)}")
    check_writable(op, state_name, state)
    return width


def check_causal_conv1d_fn_args(
    x: Tensor, weight: Tensor, bias: Tensor | None, conv_states: Tensor,
    query_start_loc: Tensor, cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None, activation: object = "silu",
    pad_slot_id: int | None = PAD_SLOT_ID, null_block_id: int | None = NULL_BLOCK_ID, *,
    check_values: bool | None = None,
) -> None:  # fmt: skip
    """x (dim, T); weight (dim, W); conv_states (slots, dim, >= W-1); query_start_loc (B+1,)
    from 0, ending at or before T (tokens past the end are padding)."""
    op = "causal_conv1d_fn"
    check_tensor(op, "x", x, ndim=2, dtypes=FLOAT_DTYPES)
    dim, total = x.shape
    dev = x.device
    _check_weights_and_state(op, dim, weight, bias, "conv_states", conv_states, dev)
    check_no_aliases(op, {"conv_states": conv_states}, {"x": x, "weight": weight, "bias": bias})
    normalize_activation(op, activation)
    values = values_enabled(check_values, query_start_loc, cache_indices, has_initial_state)
    check_tensor(op, "query_start_loc", query_start_loc, device=dev)
    check_offsets(op, "query_start_loc", query_start_loc, total, check_values=values)
    batch = query_start_loc.shape[0] - 1
    check_sequence_slots(
        op,
        "conv_states",
        conv_states.shape[0],
        batch,
        cache_indices,
        has_initial_state,
        dev,
        pad_slot_id=pad_slot_id,
        null_block_id=null_block_id,
        check_values=values,
    )


def check_causal_conv1d_update_args(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
    activation: object = None, conv_state_indices: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None, query_start_loc: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID, out: Tensor | None = None, *,
    pad_slot_id: int | None = PAD_SLOT_ID, check_values: bool | None = None,
) -> None:  # fmt: skip
    """x (B, dim) | (B, dim, S) | varlen (T, dim) with query_start_loc (B+1,);
    conv_state (slots, dim, state_len >= W-1 [+ S-1 with num_accepted_tokens]).

    The result is written into ``out``, else into ``x``: that tensor must be writable, and
    ``out`` may be ``x`` itself but may not overlap it otherwise, nor any other argument.
    """
    op = "causal_conv1d_update"
    check_tensor(op, "x", x, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    dev = x.device
    varlen = query_start_loc is not None
    if varlen and x.dim() != 2:
        raise fail(op, "x", f"must be (num_tokens, dim) with query_start_loc, got {tuple(x.shape)}")
    dim = x.shape[1]
    width = _check_weights_and_state(op, dim, weight, bias, "conv_state", conv_state, dev)
    normalize_activation(op, activation)
    if out is not None:
        check_tensor(op, "out", out, shape=tuple(x.shape), dtypes=(x.dtype,), device=dev)
    target_name, target = ("out", out) if out is not None else ("x", x)
    check_writable(op, target_name, target)
    check_no_aliases(
        op, {target_name: target, "conv_state": conv_state},
        {"x": x, "weight": weight, "bias": bias}, allow_same={target_name: ("x",)},
    )  # fmt: skip
    values = values_enabled(check_values, conv_state_indices, num_accepted_tokens, query_start_loc)
    num_slots, state_len = conv_state.shape[0], conv_state.shape[2]
    if varlen:
        assert query_start_loc is not None
        if conv_state_indices is None:
            raise fail(op, "conv_state_indices", "is required with query_start_loc")
        check_tensor(op, "query_start_loc", query_start_loc, device=dev)
        check_offsets(op, "query_start_loc", query_start_loc, x.shape[0], check_values=values)
        batch = query_start_loc.shape[0] - 1
    else:
        batch = x.shape[0]
    if conv_state_indices is not None:
        check_tensor(op, "conv_state_indices", conv_state_indices, ndim=(1, 2), device=dev)
        if conv_state_indices.shape[0] != batch:
            raise fail(
                op,
                "conv_state_indices",
                f"must have {batch} rows, got {tuple(conv_state_indices.shape)}",
            )
        # Only column 0 is a request's slot (a 2-D tensor carries spec-decode blocks beside it).
        col0 = conv_state_indices if conv_state_indices.dim() == 1 else conv_state_indices[:, 0]
        check_slot_indices(
            op, "conv_state_indices", col0, num_slots, pad_slot_id=pad_slot_id,
            null_block_id=null_block_id, check_values=values, unique=True,
        )  # fmt: skip
    elif num_slots < batch:
        raise fail(op, "conv_state", f"needs >= {batch} slots without conv_state_indices")
    if num_accepted_tokens is None:
        return
    check_tensor(
        op, "num_accepted_tokens", num_accepted_tokens, shape=(batch,), dtypes=INDEX_DTYPES,
        device=dev,
    )  # fmt: skip
    if not values or not batch:
        return
    acc = num_accepted_tokens.detach().to("cpu", torch.int64)
    if varlen:
        assert query_start_loc is not None
        q = query_start_loc.detach().to("cpu", torch.int64)
        seqlens = q[1:] - q[:-1]
    else:
        seqlens = torch.full((batch,), 1 if x.dim() == 2 else x.shape[2])
    if bool((acc < 1).any()):
        raise fail(op, "num_accepted_tokens", f"must be >= 1, got {acc.tolist()}")
    need = torch.maximum(acc - 1 + width - 1, width - 2 + seqlens)
    if int(need.max()) > state_len:
        raise fail(
            op,
            "conv_state",
            f"has {state_len} columns; num_accepted_tokens={acc.tolist()} and query lengths "
            f"{seqlens.tolist()} need {int(need.max())}",
        )
