"""Spec: store a mid-prefill checkpoint (prefix caching, vLLM's ``align`` mamba cache mode).

``store_prefill_checkpoint(x, chunk_states, conv_state, ssm_state, query_start_loc,
checkpoint_offsets, checkpoint_chunk_idx, state_indices, state_len) -> None``

In prefix caching a prefill row may have to leave, besides its final state, the state it had
``checkpoint_offsets[b]`` tokens into its query (a block boundary the cache can serve later).
The SSD scan (``mamba_chunk_scan_combined_varlen(..., return_intermediate_states=True)``) gives
the state after every chunk, and the chunk metadata puts a chunk end on the checkpoint. This op
copies both halves of the layer state into the checkpoint's block:

- ``x``: ``(dim, T)``, the conv inputs (before the conv) of the packed prefill tokens;
- ``chunk_states``: ``(nchunks, *S)``, the state after each chunk (Mamba2: ``S = (H, P, N)``);
- ``conv_state``: ``(slots, dim, cols)`` with ``cols >= state_len``, any strides (vLLM's
  ``(dim, W-1)`` view of a ``(W-1, dim)`` page); ``ssm_state``: ``(slots, *S)``, any strides;
- ``query_start_loc``: ``(batch+1,)`` token offsets from 0 (may end before ``T``);
- ``checkpoint_offsets``: ``(batch,)``; 0 means row ``b`` has no checkpoint, else the offset
  ``o`` into its query, ``state_len <= o <= query_len``;
- ``checkpoint_chunk_idx``: ``(batch,)``, the row of ``chunk_states`` that holds the state
  after token ``o - 1`` of the row (read only for rows with a checkpoint);
- ``state_indices``: ``(batch,)``, the destination slot of each row's checkpoint;
- ``state_len``: the conv state's history length, ``W - 1``.

For every row ``b`` with ``o = checkpoint_offsets[b] > 0`` and ``s = state_indices[b]`` neither
``PAD_SLOT_ID`` (-1) nor ``NULL_BLOCK_ID`` (0)::

    conv_state[s, :, j] = x[:, query_start_loc[b] + o - state_len + j]   for j < state_len
    ssm_state[s]        = chunk_states[checkpoint_chunk_idx[b]]

cast to each state's dtype. Columns ``>= state_len`` of the conv state, every other slot and
every other argument are left as they are. Rows without a checkpoint write nothing.
"""

from __future__ import annotations

from torch import Tensor

from mamba_backends.contract.checkpoint import check_store_prefill_checkpoint_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID


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
    """Write each row's checkpoint into its slot; see the module docstring."""
    check_store_prefill_checkpoint_args(
        x, chunk_states, conv_state, ssm_state, query_start_loc, checkpoint_offsets,
        checkpoint_chunk_idx, state_indices, state_len, check_values=True,
    )  # fmt: skip
    qsl = [int(v) for v in query_start_loc.tolist()]
    offs = [int(v) for v in checkpoint_offsets.tolist()]
    idx = [int(v) for v in checkpoint_chunk_idx.tolist()]
    dst = [int(v) for v in state_indices.tolist()]
    writes = []
    for b, o in enumerate(offs):
        if o == 0 or dst[b] in (PAD_SLOT_ID, NULL_BLOCK_ID):
            continue
        end = qsl[b] + o
        window = [x[:, t].clone() for t in range(end - state_len, end)]
        writes.append((dst[b], window, chunk_states[idx[b]].clone()))
    for s, window, state in writes:  # every read before the first write
        for j, col in enumerate(window):
            conv_state[s, :, j] = col.to(conv_state.dtype)
        ssm_state[s] = state.to(ssm_state.dtype)
