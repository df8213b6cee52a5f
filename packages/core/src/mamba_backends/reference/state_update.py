"""Spec: selective state update (decode), Mamba1 and Mamba2 heads form, vLLM 0.32's signature.

``selective_state_update(state, x, dt, A, B, C, D=None, dt_bias=None, z=None,
dt_softplus=False, state_batch_indices=None, dst_state_batch_indices=None,
null_block_id=NULL_BLOCK_ID, out=None, num_accepted_tokens=None, cu_seqlens=None,
is_blackwell=False, enable_stochastic_rounding=False, cache_philox_rounds=0) -> out``

Heads form (Mamba2; ``T`` is the batch, or the packed tokens when ``cu_seqlens`` is given):

- ``state``: ``(slots, H, P, N)``, any strides, updated in place;
- ``x``, ``dt``, ``z``, ``out``: ``(T, H, P)`` (vLLM passes ``dt`` expanded over ``P`` with
  stride 0, and ``A``, ``dt_bias``, ``D`` likewise tied; the spec reads every element, so tied
  and untied inputs mean the same thing);
- ``A``: ``(H, P, N)``; ``D``, ``dt_bias``: ``(H, P)``;
- ``B``, ``C``: ``(T, G, N)``; head ``h`` reads group ``h // (H // G)``.

Mamba1 form: the same without the ``H`` axis: ``state (slots, dim, N)``, ``x/dt/z/out (T, dim)``,
``A (dim, N)``, ``B/C (T, N)``, ``D/dt_bias (dim,)``.

Per request, head ``h``, channel ``p``, state index ``n`` and token ``t`` (float64)::

    dt    = dt[t, h, p] + dt_bias[h, p];   dt = softplus(dt) if dt_softplus
    s     = exp(A[h, p, n] * dt) * s + dt * B[t, g(h), n] * x[t, h, p]
    out   = sum_n s * C[t, g(h), n] + D[h, p] * x[t, h, p]
    out   = out * silu(z[t, h, p])                                     if z is given

Slots and forms (``state_batch_indices`` ``(R,)`` or ``(R, K)``, ``R`` = requests):

- no ``cu_seqlens``: one token per request (``R = T``);
- ``cu_seqlens`` ``(R+1,)``: request ``r`` owns tokens ``[cu_seqlens[r], cu_seqlens[r+1])``;
- without ``num_accepted_tokens``: ``s`` starts from ``state[state_batch_indices[r, 0]]`` and its
  value after the request's last token is written to ``state[dst_state_batch_indices[r, 0]]``
  (``dst`` defaults to the source: in place). Without indices, request ``r`` uses slot ``r``;
- with ``num_accepted_tokens`` ``(R,)`` (speculative decoding): ``s`` starts from
  ``state[state_batch_indices[r, max(a-1, 0)]]`` and the value after token ``t`` of the request
  is written to ``state[dst_state_batch_indices[r, t]]`` for every ``t``; there is no other
  write.

A request whose source slot is ``null_block_id`` (``None`` disables it) or ``PAD_SLOT_ID`` is
skipped: no state is read or written, and its rows of ``out`` are left as they were (vLLM's
kernel computes them from a zero state; callers must not read them). A destination slot that is
null/pad is not written. Requests without tokens are skipped.

Order of reads and writes: **every state read happens before any state write**, as a GPU
kernel that runs all requests at once behaves. A request's destination slot may be another
request's source (chains ``1 -> 2 -> 3``, swaps ``1 <-> 2``: copy-on-write blocks do this): the
other request still starts from the slot's old value. Destinations are distinct. Likewise every
input row is read before ``out`` is written, so ``out`` may be ``x`` (or ``z``) itself, varlen
form included: no request ever reads a row that holds an output.

Zero-length requests (``cu_seqlens[r] == cu_seqlens[r+1]``, anywhere, at the end included) and
a padded tail (``cu_seqlens[-1] < T``: the tail rows of ``out`` are left as they were) are
legal. NaN and inf propagate as the float64 formulas above give them (e.g. ``silu(-inf)`` is
NaN, as torch computes it); a slot that no request reads may hold anything, NaN included.

``out`` is written in place and returned; when omitted a new tensor like ``x`` is returned (as
vLLM's CPU op does; its Triton op requires ``out``). ``is_blackwell`` and
``cache_philox_rounds`` are tuning knobs without effect on the math;
``enable_stochastic_rounding=True`` raises ``NotImplementedError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import check_selective_state_update_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

F64 = torch.float64


def _skip(slot: int, null_block_id: int | None) -> bool:
    return slot == PAD_SLOT_ID or (null_block_id is not None and slot == null_block_id)


def _as_2d_indices(idx: Tensor | None) -> list[list[int]] | None:
    if idx is None:
        return None
    return (idx[:, None] if idx.dim() == 1 else idx).tolist()


def selective_state_update(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    z: Tensor | None = None,
    dt_softplus: bool = False,
    state_batch_indices: Tensor | None = None,
    dst_state_batch_indices: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID,
    out: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    is_blackwell: bool = False,
    enable_stochastic_rounding: bool = False,
    cache_philox_rounds: int = 0,
) -> Tensor:
    """One recurrent SSM step per token; see the module docstring."""
    if enable_stochastic_rounding:
        raise NotImplementedError(
            "selective_state_update: argument 'enable_stochastic_rounding' is not supported "
            "by the spec (it rounds states deterministically)"
        )
    check_selective_state_update_args(
        state, x, dt, A, B, C, D, dt_bias, z, state_batch_indices, dst_state_batch_indices,
        null_block_id, out, num_accepted_tokens, cu_seqlens, pad_slot_id=PAD_SLOT_ID,
        check_values=True,
    )  # fmt: skip
    if out is None:
        out = torch.empty_like(x)
    # Work on the heads form: add H = 1 to the Mamba1 form (views, so writes go through).
    if state.dim() == 3:
        st, xs, dts, As, Bs, Cs = (
            state[:, None], x[:, None], dt[:, None], A[None], B[:, None], C[:, None]
        )  # fmt: skip
        Ds = D[None] if D is not None else None
        biases = dt_bias[None] if dt_bias is not None else None
        zs = z[:, None] if z is not None else None
        outs = out[:, None]
    else:
        st, xs, dts, As, Bs, Cs, Ds, biases, zs, outs = (
            state, x, dt, A, B, C, D, dt_bias, z, out
        )  # fmt: skip
    _, H, P, N = st.shape
    G = Bs.shape[1]
    group_of_head = torch.arange(H, device=x.device) // (H // G)
    T = xs.shape[0]
    if cu_seqlens is not None:
        cu = [int(v) for v in cu_seqlens.tolist()]
    else:
        cu = list(range(T + 1))
    src_idx = _as_2d_indices(state_batch_indices)
    dst_idx = _as_2d_indices(dst_state_batch_indices) or src_idx
    accepted = num_accepted_tokens.tolist() if num_accepted_tokens is not None else None
    spec = accepted is not None

    A64 = As.to(F64)
    D64 = Ds.to(F64) if Ds is not None else None
    bias64 = biases.to(F64) if biases is not None else None
    outputs: list[tuple[int, Tensor]] = []  # (token row, (H, P))
    writes: list[tuple[int, Tensor]] = []  # (slot, (H, P, N))
    for r in range(len(cu) - 1):
        start, end = cu[r], cu[r + 1]
        if end == start:
            continue
        if src_idx is None:
            src = r
        else:
            src = (
                src_idx[r][max(int(accepted[r]) - 1, 0)] if accepted is not None else src_idx[r][0]
            )
            if _skip(src, null_block_id):
                continue
        s = st[src].to(F64)
        for t in range(start, end):
            dt_t = dts[t].to(F64)
            if bias64 is not None:
                dt_t = dt_t + bias64
            if dt_softplus:
                dt_t = F.softplus(dt_t)
            Bt = Bs[t].to(F64)[group_of_head]  # (H, N)
            Ct = Cs[t].to(F64)[group_of_head]
            x_t = xs[t].to(F64)  # (H, P)
            s = torch.exp(A64 * dt_t[..., None]) * s + (dt_t * x_t)[..., None] * Bt[:, None, :]
            y = (s * Ct[:, None, :]).sum(dim=-1)
            if D64 is not None:
                y = y + D64 * x_t
            if zs is not None:
                y = y * F.silu(zs[t].to(F64))
            outputs.append((t, y))
            if spec:
                assert dst_idx is not None
                writes.append((dst_idx[r][t - start], s))
        if not spec:
            dst = dst_idx[r][0] if dst_idx is not None else r
            writes.append((dst, s))
    for slot, s in writes:
        if src_idx is None or not _skip(slot, null_block_id):
            st[slot] = s.to(st.dtype)
    for t, y in outputs:
        outs[t] = y.to(outs.dtype)
    return out
