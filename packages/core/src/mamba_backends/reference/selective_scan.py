"""Spec: Mamba1 selective scan (varlen prefill), with vLLM 0.32's signature.

``selective_scan_fn(u, ssm_states, delta, A, B, C, D=None, z=None, delta_bias=None,
delta_softplus=False, query_start_loc=None, cache_indices=None, has_initial_state=None,
null_block_id=NULL_BLOCK_ID, block_size=1024, block_idx_first_scheduled_token=None,
block_idx_last_scheduled_token=None, initial_state_idx=None, cu_chunk_seqlen=None,
last_chunk_indices=None) -> out``

Shapes (varlen, with ``query_start_loc`` ``(B+1,)``; the batched form adds a leading batch
axis and replaces ``T`` by the sequence length ``L``):

- ``u``, ``delta``, ``z``: ``(dim, T)``; ``A``: ``(dim, N)``; ``D``, ``delta_bias``: ``(dim,)``;
- ``B``, ``C``: ``(G, N, T)`` or ``(N, T)`` (``G = 1``). Channel ``d`` reads group
  ``d // (dim // G)`` (block mapping);
- ``ssm_states``: ``(slots, dim, N)``, any strides, updated in place;
- ``cache_indices``: ``(B,)`` slot per sequence (default: slot ``b``); ``has_initial_state``:
  ``(B,)`` bool (default: all False).

Per sequence, channel ``d``, state index ``n`` and token ``t`` (float64)::

    dt    = delta[d, t] + delta_bias[d];   dt = softplus(dt) if delta_softplus
    h[n]  = exp(A[d, n] * dt) * h[n] + dt * B[g(d), n, t] * u[d, t]
    y     = sum_n C[g(d), n, t] * h[n] + D[d] * u[d, t]
    y     = y * silu(z[d, t])                                  if z is given

``h`` starts from ``ssm_states[slot]`` when ``has_initial_state[b]``, else from zero, and then
the slot is **never read** (it may hold anything, NaN included); its final value is written to
``ssm_states[slot]`` in the state's dtype. Every state is read before any is written. NaN and
inf in the inputs propagate as the float64 formulas give them (``softplus(-inf) = 0``, so
``0 * inf`` is NaN; ``silu(-inf)`` is NaN). Zero-length sequences and a padded tail
(``query_start_loc[-1] < T``; the tail's columns are left as they were) are legal.
The output is written in place into ``z`` when given, else into ``delta`` (as vLLM does),
and that tensor is returned. With ``z``, vLLM's kernel also leaves the ungated ``y`` in
``delta``; the spec does the same, but callers must treat ``delta`` as clobbered, not as a
result.
Sequences whose slot is ``null_block_id`` (``None`` disables it) or ``PAD_SLOT_ID``, and
sequences with no tokens, are skipped: their state is untouched and their output columns keep
their old values.

Prefix caching (``block_idx_*``, ``initial_state_idx``) and the chunk arguments used with it
(``cu_chunk_seqlen``, ``last_chunk_indices``) only say where intermediate states go; without
APC vLLM's kernel ignores them and so does the spec. ``block_size`` is likewise APC-only. The
APC arguments raise ``NotImplementedError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import check_not_supported, check_selective_scan_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

F64 = torch.float64


def _scan_one(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, h: Tensor
) -> tuple[Tensor, Tensor]:
    """One sequence: u/dt (dim, S), A (dim, N), B/C (dim, N, S) per channel, h (dim, N).

    Returns the ungated output ``y`` (dim, S) and the final state (dim, N).
    """
    S = u.shape[1]
    y = torch.empty_like(u)
    for t in range(S):
        h = torch.exp(A * dt[:, t, None]) * h + dt[:, t, None] * B[:, :, t] * u[:, t, None]
        y[:, t] = (h * C[:, :, t]).sum(dim=1)
        if D is not None:
            y[:, t] += D * u[:, t]
    return y, h


def selective_scan_fn(
    u: Tensor,
    ssm_states: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    query_start_loc: Tensor | None = None,
    cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID,
    block_size: int = 1024,
    block_idx_first_scheduled_token: Tensor | None = None,
    block_idx_last_scheduled_token: Tensor | None = None,
    initial_state_idx: Tensor | None = None,
    cu_chunk_seqlen: Tensor | None = None,
    last_chunk_indices: Tensor | None = None,
) -> Tensor:
    """Mamba1 scan over packed sequences; see the module docstring."""
    op = "selective_scan_fn"
    check_not_supported(
        op,
        block_idx_first_scheduled_token=block_idx_first_scheduled_token,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
    )
    check_selective_scan_args(
        u, ssm_states, delta, A, B, C, D, z, delta_bias, query_start_loc, cache_indices,
        has_initial_state, null_block_id, pad_slot_id=PAD_SLOT_ID, check_values=True,
    )  # fmt: skip
    varlen = query_start_loc is not None
    dim, N = A.shape
    # Uniform view: a list of (batch row or None, start, end) token ranges.
    ranges: list[tuple[int | None, int, int]]
    if varlen:
        assert query_start_loc is not None
        qsl = [int(v) for v in query_start_loc.tolist()]
        ranges = [(None, qsl[b], qsl[b + 1]) for b in range(len(qsl) - 1)]
    else:
        ranges = [(b, 0, u.shape[-1]) for b in range(u.shape[0])]
    slots = [int(v) for v in cache_indices.tolist()] if cache_indices is not None else None
    has_init = (
        [bool(v) for v in has_initial_state.tolist()] if has_initial_state is not None else None
    )
    group_of_channel = torch.arange(dim, device=u.device) // (dim // _groups(B, varlen))
    A64 = A.to(F64)
    D64 = D.to(F64) if D is not None else None
    bias64 = delta_bias.to(F64) if delta_bias is not None else None
    target = z if z is not None else delta
    results: list[tuple[int, Tensor, Tensor, int | None, int, int]] = []
    for b, (row, start, end) in enumerate(ranges):
        slot = slots[b] if slots is not None else b
        skipped = slot == PAD_SLOT_ID or (null_block_id is not None and slot == null_block_id)
        if end == start or (slots is not None and skipped):
            continue

        def seq(t: Tensor, row: int | None = row, start: int = start, end: int = end) -> Tensor:
            return (t if row is None else t[row])[..., start:end].to(F64)

        dt = seq(delta)
        if bias64 is not None:
            dt = dt + bias64[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        Bs, Cs = seq(B), seq(C)
        if Bs.dim() == 2:  # (N, S): one group
            Bs, Cs = Bs[None], Cs[None]
        Bd, Cd = Bs[group_of_channel], Cs[group_of_channel]  # (dim, N, S)
        if has_init is not None and has_init[b]:
            h0 = ssm_states[slot].to(F64)
        else:
            h0 = torch.zeros(dim, N, dtype=F64, device=u.device)
        y, h = _scan_one(seq(u), dt, A64, Bd, Cd, D64, h0)
        results.append((slot, y, h, row, start, end))
    for slot, y, h, row, start, end in results:
        ssm_states[slot] = h.to(ssm_states.dtype)
        # Like vLLM's kernel: delta receives the ungated output, z the gated one.
        dst = delta if row is None else delta[row]
        dst[:, start:end] = y.to(delta.dtype)
        if z is not None:
            zs = z if row is None else z[row]
            zs[:, start:end] = (y * F.silu(zs[:, start:end].to(F64))).to(z.dtype)
    return target


def _groups(B: Tensor, varlen: bool) -> int:
    return B.shape[-3] if B.dim() == (3 if varlen else 4) else 1
