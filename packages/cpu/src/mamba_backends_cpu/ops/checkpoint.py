"""CPU ``store_prefill_checkpoint``: gathers and one indexed copy per state, no loop over rows.

Semantics: :mod:`mamba_backends.reference.checkpoint`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract import check_store_prefill_checkpoint_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_cpu.ops._common import live_slots


def store_prefill_checkpoint(
    x: Tensor,
    chunk_states: Tensor,
    conv_state: Tensor,
    ssm_state: Tensor,
    query_start_loc: Tensor,
    checkpoint_offsets: Tensor,
    checkpoint_chunk_idx: Tensor,
    state_indices: Tensor,
    state_len: int,
) -> None:
    """Copy each checkpointing row's conv window and chunk state into its slot.

    Args:
        x: ``(dim, T)`` conv inputs of the packed prefill tokens.
        chunk_states: ``(nchunks, *S)`` state after every SSD chunk.
        conv_state: ``(slots, dim, >= state_len)``, any strides; columns ``[0, state_len)`` of
            the destination slots are written.
        ssm_state: ``(slots, *S)``, any strides.
        query_start_loc: ``(batch+1,)``.
        checkpoint_offsets: ``(batch,)``; 0 = no checkpoint.
        checkpoint_chunk_idx: ``(batch,)`` row of ``chunk_states`` per checkpoint.
        state_indices: ``(batch,)`` destination slots (pad ``-1`` / null ``0`` skipped).
        state_len: ``W - 1``.
    """
    check_store_prefill_checkpoint_args(
        x, chunk_states, conv_state, ssm_state, query_start_loc, checkpoint_offsets,
        checkpoint_chunk_idx, state_indices, state_len,
    )  # fmt: skip
    slots = state_indices.to(torch.int64)
    offs = checkpoint_offsets.to(torch.int64)
    rows = torch.nonzero((offs != 0) & live_slots(slots, PAD_SLOT_ID, NULL_BLOCK_ID)).flatten()
    if rows.numel() == 0:
        return
    dst = slots[rows]
    ends = query_start_loc.to(torch.int64)[rows] + offs[rows]  # (r,)
    tokens = ends[:, None] - state_len + torch.arange(state_len, dtype=torch.int64)  # (r, L)
    window = x[:, tokens].permute(1, 0, 2)  # (r, dim, L): a copy (advanced indexing)
    states = chunk_states[checkpoint_chunk_idx.to(torch.int64)[rows]]  # (r, *S), a copy
    conv_state[dst, :, :state_len] = window.to(conv_state.dtype)
    ssm_state[dst] = states.to(ssm_state.dtype)
