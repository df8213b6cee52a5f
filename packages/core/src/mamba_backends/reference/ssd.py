"""Spec: Mamba2 SSD chunk scan (varlen prefill), with vLLM 0.32's signature.

``mamba_chunk_scan_combined_varlen(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens,
last_chunk_indices, seq_idx, out, D=None, z=None, dt_bias=None, initial_states=None,
dt_softplus=False, dt_limit=(0.0, inf), return_intermediate_states=False, state_dtype=None,
final_states_out=None, final_state_indices=None) -> states | None``

- ``x``, ``z``, ``out``: ``(T, H, P)``; ``dt``: ``(T, H)``; ``A``, ``dt_bias``: ``(H,)``;
- ``B``, ``C``: ``(T, G, N)``; head ``h`` reads group ``h // (H // G)``;
- ``D``: ``(H, P)`` or ``(H,)`` (one value per head);
- ``cu_seqlens``: ``(batch+1,)`` token offsets from 0; every sequence has at least one token.
  It may end before ``T`` (a padded tail): tokens past ``cu_seqlens[-1]`` are padding;
- chunk metadata (see :func:`mamba_backends.metadata.compute_chunk_metadata`):
  ``cu_chunk_seqlens`` ``(nchunks+1,)``, ``seq_idx`` ``(nchunks,)`` (the sequence of each chunk),
  ``last_chunk_indices`` ``(batch,)`` (each sequence's last chunk). Chunks are at most
  ``chunk_size`` tokens and never span two sequences;
- ``initial_states``: ``(batch, H, P, N)`` per *sequence* (the caller gathers slots and zeroes
  the rows without initial state), default zeros.

Per sequence, head ``h``, channel ``p``, state index ``n`` and token ``t`` (float64; the SSD
chunked algorithm is an exact re-association of this recurrence, so the result does not depend
on how the tokens are cut into chunks)::

    dt    = dt[t, h] + dt_bias[h];  dt = softplus(dt) if dt_softplus
    dt    = clamp(dt, dt_limit[0], dt_limit[1])          (always, as vLLM's Triton kernel does)
    s     = exp(A[h] * dt) * s + dt * x[t, h, p] * B[t, g(h), n]
    out   = sum_n C[t, g(h), n] * s + D[h(, p)] * x[t, h, p]
    out   = out * silu(z[t, h, p])                        if z is given

``out`` is written in place (tokens outside ``cu_seqlens`` are left as they were). Returns the
state after each sequence's last token, ``(batch, H, P, N)``; with
``return_intermediate_states`` the state after every chunk, ``(nchunks, H, P, N)`` (row
``last_chunk_indices[b]`` is sequence ``b``'s final state). States are returned in
``state_dtype``, default ``C.dtype``. Nothing else is written: the caller scatters the states to
its slots.

vLLM 0.33's form scatters them in the op instead: with ``final_states_out``
``(slots, H, P, N)`` (any strides, any float dtype; written in place, cast to its dtype) the
final state of sequence ``b`` is written to ``final_states_out[final_state_indices[b]]``
(``final_state_indices`` ``(batch,)``; without it, slot ``b``) and the op returns ``None``.
As for every other state index, an entry equal to ``PAD_SLOT_ID`` (-1) or ``NULL_BLOCK_ID`` (0)
is skipped: that slot is not written. All states are computed before the first is written, so
``final_states_out`` may be the pool that ``initial_states`` was gathered from. It cannot be
combined with ``return_intermediate_states=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import check_ssd_varlen_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

F64 = torch.float64


def mamba_chunk_scan_combined_varlen(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    cu_seqlens: Tensor,
    cu_chunk_seqlens: Tensor,
    last_chunk_indices: Tensor,
    seq_idx: Tensor,
    out: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_intermediate_states: bool = False,
    state_dtype: torch.dtype | None = None,
    final_states_out: Tensor | None = None,
    final_state_indices: Tensor | None = None,
) -> Tensor | None:
    """Mamba2 scan over packed sequences; see the module docstring."""
    check_ssd_varlen_args(
        x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx,
        out, D, z, dt_bias, initial_states, dt_limit, state_dtype, return_intermediate_states,
        final_states_out, final_state_indices, check_values=True,
    )  # fmt: skip
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    group_of_head = torch.arange(H, device=x.device) // (H // G)
    cu = [int(v) for v in cu_seqlens.tolist()]
    chunk_ends = {int(e): k for k, e in enumerate(cu_chunk_seqlens.tolist()[1:])}
    A64 = A.to(F64)
    D64 = None
    if D is not None:
        D64 = D.to(F64) if D.dim() == 2 else D.to(F64)[:, None].expand(H, P)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])

    y_all = torch.zeros(T, H, P, dtype=F64, device=x.device)
    final = torch.zeros(len(cu) - 1, H, P, N, dtype=F64, device=x.device)
    per_chunk = torch.zeros(len(chunk_ends), H, P, N, dtype=F64, device=x.device)
    for b in range(len(cu) - 1):
        if initial_states is not None:
            s = initial_states[b].to(F64)
        else:
            s = torch.zeros(H, P, N, dtype=F64, device=x.device)
        for t in range(cu[b], cu[b + 1]):
            dt_t = dt[t].to(F64)  # (H,)
            if dt_bias is not None:
                dt_t = dt_t + dt_bias.to(F64)
            if dt_softplus:
                dt_t = F.softplus(dt_t)
            dt_t = dt_t.clamp(lo, hi)
            x_t = x[t].to(F64)  # (H, P)
            Bt = B[t].to(F64)[group_of_head]  # (H, N)
            Ct = C[t].to(F64)[group_of_head]
            decay = torch.exp(A64 * dt_t)[:, None, None]
            s = decay * s + (dt_t[:, None] * x_t)[..., None] * Bt[:, None, :]
            y = (s * Ct[:, None, :]).sum(dim=-1)
            if D64 is not None:
                y = y + D64 * x_t
            if z is not None:
                y = y * F.silu(z[t].to(F64))
            y_all[t] = y
            if t + 1 in chunk_ends:
                per_chunk[chunk_ends[t + 1]] = s
        final[b] = s
    out[cu[0] : cu[-1]] = y_all[cu[0] : cu[-1]].to(out.dtype)
    if final_states_out is not None:
        slots = range(len(cu) - 1) if final_state_indices is None else final_state_indices.tolist()
        for b, slot in enumerate(slots):
            if final_state_indices is None or int(slot) not in (PAD_SLOT_ID, NULL_BLOCK_ID):
                final_states_out[int(slot)] = final[b].to(final_states_out.dtype)
        return None
    dtype = state_dtype if state_dtype is not None else C.dtype
    return (per_chunk if return_intermediate_states else final).to(dtype)
