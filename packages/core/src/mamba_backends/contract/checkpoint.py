"""Contract of ``store_prefill_checkpoint`` (prefix caching: a mid-prefill state into a block)."""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract.generic import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_no_alias,
    check_offsets,
    check_positive_int,
    check_slot_indices,
    check_tensor,
    check_writable,
    fail,
    values_enabled,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

OP = "store_prefill_checkpoint"


def check_store_prefill_checkpoint_args(
    x: Tensor, chunk_states: Tensor, conv_state: Tensor, ssm_state: Tensor,
    query_start_loc: Tensor, checkpoint_offsets: Tensor, checkpoint_chunk_idx: Tensor,
    state_indices: Tensor, state_len: int, *, check_values: bool | None = None,
) -> None:  # fmt: skip
    """``x`` ``(dim, T)``; ``chunk_states`` ``(nchunks, *S)``; ``conv_state``
    ``(slots, dim, >= state_len)``; ``ssm_state`` ``(slots, *S)``; ``query_start_loc``
    ``(batch+1,)``; ``checkpoint_offsets``, ``checkpoint_chunk_idx``, ``state_indices``
    ``(batch,)``.

    Value rules (see :func:`~mamba_backends.contract.values_enabled`): an offset is 0 (no
    checkpoint) or lies in ``[state_len, query_len]`` of its row (the conv window lies in the
    row); a row with a checkpoint has ``checkpoint_chunk_idx`` in ``[0, nchunks)``; a live
    destination (not pad/null) lies in ``[0, slots)`` and no two rows with a checkpoint write
    the same one. Both states are written: writable, sharing no memory with ``x`` or
    ``chunk_states`` (they may share one page buffer with each other, as vLLM's do).
    """
    check_positive_int(OP, "state_len", state_len)
    check_tensor(OP, "x", x, ndim=2, dtypes=FLOAT_DTYPES)
    dev = x.device
    dim, T = x.shape
    check_tensor(OP, "chunk_states", chunk_states, dtypes=FLOAT_DTYPES, device=dev)
    if chunk_states.dim() < 2:
        raise fail(OP, "chunk_states", f"must be (nchunks, ...), got {tuple(chunk_states.shape)}")
    inner = tuple(chunk_states.shape[1:])
    check_tensor(OP, "conv_state", conv_state, ndim=3, dtypes=FLOAT_DTYPES, device=dev)
    if conv_state.shape[1] != dim:
        raise fail(OP, "conv_state", f"has dim {conv_state.shape[1]}, x has {dim}")
    if conv_state.shape[2] < state_len:
        raise fail(OP, "conv_state", f"has {conv_state.shape[2]} columns < state_len {state_len}")
    slots = conv_state.shape[0]
    check_tensor(OP, "ssm_state", ssm_state, shape=(slots, *inner), dtypes=FLOAT_DTYPES, device=dev)
    for name, t in (("conv_state", conv_state), ("ssm_state", ssm_state)):
        check_writable(OP, name, t)
        check_no_alias(OP, name, t, {"x": x, "chunk_states": chunk_states})
    check_tensor(OP, "query_start_loc", query_start_loc, ndim=1, dtypes=INDEX_DTYPES, device=dev)
    batch = query_start_loc.shape[0] - 1
    for name, t in (
        ("checkpoint_offsets", checkpoint_offsets),
        ("checkpoint_chunk_idx", checkpoint_chunk_idx),
        ("state_indices", state_indices),
    ):
        check_tensor(OP, name, t, shape=(batch,), dtypes=INDEX_DTYPES, device=dev)
    values = values_enabled(
        check_values, query_start_loc, checkpoint_offsets, checkpoint_chunk_idx, state_indices
    )
    check_offsets(OP, "query_start_loc", query_start_loc, T, check_values=values)
    if not values or batch == 0:
        return
    qsl = query_start_loc.detach().to("cpu", torch.int64).tolist()
    offs = checkpoint_offsets.detach().to("cpu", torch.int64).tolist()
    idx = checkpoint_chunk_idx.detach().to("cpu", torch.int64).tolist()
    for b, off in enumerate(offs):
        if off == 0:
            continue
        qlen = qsl[b + 1] - qsl[b]
        if not state_len <= off <= qlen:
            raise fail(
                OP, "checkpoint_offsets", f"row {b}: {off} is neither 0 nor in "
                f"[state_len={state_len}, query_len={qlen}]",
            )  # fmt: skip
        if not 0 <= idx[b] < chunk_states.shape[0]:
            raise fail(
                OP, "checkpoint_chunk_idx", f"row {b}: {idx[b]} outside [0, "
                f"{chunk_states.shape[0]}) (nchunks)",
            )  # fmt: skip
    live = [b for b, off in enumerate(offs) if off != 0]
    check_slot_indices(
        OP, "state_indices", state_indices[live], slots, pad_slot_id=PAD_SLOT_ID,
        null_block_id=NULL_BLOCK_ID, check_values=True, unique=True,
    )  # fmt: skip
