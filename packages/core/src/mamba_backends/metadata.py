"""The metadata builder contract: prefill/decode split, state indices and SSD chunk metadata.

The batch follows vLLM's order: decode requests first, then prefill requests. A request is a
decode when its query length is at most ``decode_threshold`` *and* it has context (state) from
earlier steps. Everything else is a prefill (a new prompt, or a chunk of a prompt continuing
across steps, whose ``has_initial_states`` is then True).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MambaMetadata:
    """Per-step metadata for one group of mamba layers.

    Shapes use ``B`` for the batch, ``Bp``/``Bd`` for its prefills/decodes, ``Tp`` for the number
    of prefill tokens and ``NC`` for the number of SSD chunks.
    """

    num_prefills: int
    num_prefill_tokens: int
    num_decodes: int
    num_decode_tokens: int
    #: ``(B+1,)`` int32 token offsets of the whole batch.
    query_start_loc: Tensor
    #: ``(B,)`` int32 state slot of every request.
    state_indices: Tensor
    #: ``(Bp+1,)`` int32 offsets of the prefill tokens, rebased to start at 0.
    query_start_loc_p: Tensor | None = None
    #: ``(Bp,)`` int32 state slots of the prefills.
    state_indices_p: Tensor | None = None
    #: ``(Bd,)`` int32 state slots of the decodes.
    state_indices_d: Tensor | None = None
    #: ``(Bp,)`` bool: the prefill continues from a stored state.
    has_initial_states_p: Tensor | None = None
    #: ``(Bp,)`` int32 tokens already processed before this step.
    context_lens_p: Tensor | None = None
    #: SSD chunk size the chunk metadata below was cut with.
    chunk_size: int | None = None
    #: ``(NC+1,)`` int32 token offsets of the SSD chunks within the prefill tokens.
    cu_chunk_seqlens: Tensor | None = None
    #: ``(Bp,)`` int32 index of each prefill's last chunk (where its final state is read).
    last_chunk_indices: Tensor | None = None
    #: ``(NC,)`` int32 prefill index that each chunk belongs to.
    seq_idx: Tensor | None = None


def compute_chunk_metadata(
    query_start_loc_p: Tensor, context_lens_p: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each prefill into SSD chunks aligned to absolute positions.

    A sequence that resumes at a position that is not a multiple of ``chunk_size`` first
    finishes that chunk; later chunks start at multiples of ``chunk_size``. No chunk spans two
    sequences.

    Args:
        query_start_loc_p: ``(Bp+1,)`` offsets of the prefill tokens, starting at 0.
        context_lens_p: ``(Bp,)`` tokens already processed per prefill.
        chunk_size: SSD chunk length, positive.

    Returns:
        ``(cu_chunk_seqlens (NC+1,), last_chunk_indices (Bp,), seq_idx (NC,))``, all int32.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    qsl = query_start_loc_p.to("cpu", torch.int64)
    ctx = context_lens_p.to("cpu", torch.int64)
    q_lens = qsl[1:] - qsl[:-1]
    if bool((q_lens <= 0).any()):
        raise ValueError("query_start_loc_p: every prefill needs at least one token")
    # Chunk boundaries per sequence, in absolute positions: ctx, next multiples, ctx + q.
    start = ctx
    end = ctx + q_lens
    first_boundary = (start // chunk_size + 1) * chunk_size
    n_chunks = torch.where(
        end <= first_boundary,
        torch.ones_like(start),
        1 + (end - first_boundary + chunk_size - 1) // chunk_size,
    )
    seq_idx = torch.repeat_interleave(torch.arange(len(q_lens)), n_chunks)
    # Position of each chunk within its sequence's chunk list.
    chunk_first = torch.cumsum(n_chunks, 0) - n_chunks
    k = torch.arange(int(n_chunks.sum())) - chunk_first[seq_idx]
    chunk_end_abs = torch.minimum(first_boundary[seq_idx] + k * chunk_size, end[seq_idx])
    chunk_end = chunk_end_abs - start[seq_idx] + qsl[:-1][seq_idx]
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), chunk_end])
    last = torch.cumsum(n_chunks, 0) - 1
    device = query_start_loc_p.device
    return (
        cu.to(device, torch.int32),
        last.to(device, torch.int32),
        seq_idx.to(device, torch.int32),
    )


class MambaMetadataBuilder:
    """Builds :class:`MambaMetadata` from the scheduler's per-step facts.

    Args:
        chunk_size: SSD chunk size; when set, chunk metadata is computed for the prefills.
        decode_threshold: a request with context and at most this many query tokens is a
            decode (1 normally; 1 + speculative tokens with spec decode).
    """

    def __init__(self, chunk_size: int | None = None, decode_threshold: int = 1) -> None:
        if decode_threshold < 1:
            raise ValueError(f"decode_threshold must be >= 1, got {decode_threshold}")
        self.chunk_size = chunk_size
        self.decode_threshold = decode_threshold

    def build(
        self, query_start_loc: Tensor, context_lens: Tensor, state_indices: Tensor
    ) -> MambaMetadata:
        """Split the batch into decodes and prefills.

        Args:
            query_start_loc: ``(B+1,)`` int token offsets of the batch, starting at 0.
            context_lens: ``(B,)`` tokens each request had processed before this step.
            state_indices: ``(B,)`` state slot of each request.
        """
        qsl = query_start_loc.to("cpu", torch.int64)
        ctx = context_lens.to("cpu", torch.int64)
        if qsl.dim() != 1 or qsl.numel() < 1 or int(qsl[0]) != 0:
            raise ValueError("query_start_loc must be a 1-D tensor of offsets starting at 0")
        batch = qsl.numel() - 1
        if ctx.shape != (batch,):
            raise ValueError(f"context_lens must have shape ({batch},), got {tuple(ctx.shape)}")
        if state_indices.shape != (batch,):
            raise ValueError(
                f"state_indices must have shape ({batch},), got {tuple(state_indices.shape)}"
            )
        q_lens = qsl[1:] - qsl[:-1]
        is_decode = (q_lens <= self.decode_threshold) & (ctx > 0)
        num_decodes = int(is_decode.sum())
        if bool(is_decode[num_decodes:].any()):
            raise ValueError("the batch must hold its decode requests before its prefills")
        num_prefills = batch - num_decodes
        num_decode_tokens = int(qsl[num_decodes])
        num_prefill_tokens = int(qsl[-1]) - num_decode_tokens
        device = query_start_loc.device
        md: dict[str, object] = {}
        if num_prefills:
            qsl_p = (qsl[num_decodes:] - num_decode_tokens).to(device, torch.int32)
            ctx_p = ctx[num_decodes:]
            md.update(
                query_start_loc_p=qsl_p,
                state_indices_p=state_indices[num_decodes:],
                has_initial_states_p=(ctx_p > 0).to(device),
                context_lens_p=ctx_p.to(device, torch.int32),
            )
            if self.chunk_size is not None:
                cu, last, seq_idx = compute_chunk_metadata(qsl_p, ctx_p, self.chunk_size)
                md.update(
                    chunk_size=self.chunk_size,
                    cu_chunk_seqlens=cu,
                    last_chunk_indices=last,
                    seq_idx=seq_idx,
                )
        if num_decodes:
            md["state_indices_d"] = state_indices[:num_decodes]
        return MambaMetadata(
            num_prefills=num_prefills,
            num_prefill_tokens=num_prefill_tokens,
            num_decodes=num_decodes,
            num_decode_tokens=num_decode_tokens,
            query_start_loc=query_start_loc.to(torch.int32),
            state_indices=state_indices,
            **md,  # type: ignore[arg-type]
        )
