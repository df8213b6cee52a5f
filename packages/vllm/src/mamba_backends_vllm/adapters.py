"""Adapters: vLLM kernels whose signature is not ours, served by one of our ops.

Each factory takes our backend's op and returns a function with the signature of the vLLM kernel
it replaces (the layer module's global, see ``KernelAdapter`` in :mod:`mamba_backends_vllm.seams`).
The adapter only unpacks vLLM's objects into our op's tensors; it computes nothing itself.

This module imports nothing from vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor


def store_prefill_checkpoint(op: Callable[..., Any]) -> Callable[..., None]:
    """vLLM 0.32's ``ops.ssd_checkpoint.store_prefill_checkpoint`` on our op of the same name.

    vLLM's call (``MambaMixer2``, prefix caching): ``(checkpoint, chunk_idx, x, conv_state,
    chunk_states, ssm_state, query_start_loc, *, state_len)`` where ``checkpoint`` is a
    ``MambaPrefillCheckpointMetadata`` (``checkpoint_offsets`` ``(batch,)`` int32, 0 = none;
    ``state_indices`` ``(batch,)`` destination blocks, ``NULL_BLOCK_ID`` where none),
    ``chunk_idx`` ``(batch,)``, ``x`` ``(dim, T)`` the pre-conv inputs, ``conv_state``
    ``(blocks, dim, W-1[+spec])``, ``chunk_states`` ``(nchunks, H, P, N)``, ``ssm_state``
    ``(blocks, H, P, N)``, ``query_start_loc`` ``(batch+1,)``.
    """

    def adapter(
        checkpoint: Any,
        chunk_idx: Tensor,
        x: Tensor,
        conv_state: Tensor,
        chunk_states: Tensor,
        ssm_state: Tensor,
        query_start_loc: Tensor,
        *,
        state_len: int,
    ) -> None:
        op(
            x,
            chunk_states,
            conv_state,
            ssm_state,
            query_start_loc,
            checkpoint.checkpoint_offsets,
            chunk_idx,
            checkpoint.state_indices,
            state_len,
        )

    adapter.__name__ = adapter.__qualname__ = "store_prefill_checkpoint"
    adapter.__doc__ = store_prefill_checkpoint.__doc__
    return adapter
