"""CPU kernels: selective state update (Mamba1 and Mamba2 heads form, decode).

One decode step is ``h = exp(dt*A) * h + (dt*x) B^T``, ``y = h C + D*x``, ``y *= silu(z)``.
With one token per request (plain decode) and fp32 compute, the fused native kernel
(``_native``) updates every indexed state in place in one pass, reading all inputs through
their strides (vLLM's tied Mamba2 layout included). Otherwise (no compiler, speculative
decoding, ``cu_seqlens``, fp64) the PyTorch path gathers the batch's states once, updates
them with batched ops (a per-head scalar decay and one ``baddbmm`` for the tied form, the
full ``(P, N)`` decay otherwise), reads ``y`` with one ``bmm`` and scatters the states back.
Null (``0``) and pad (``-1``) slots are neither read nor written, and the ``out`` rows of a
request with a null/pad source slot are left as they were.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import check_selective_state_update_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_cpu.native import _build
from mamba_backends_cpu.native import ssm as _native
from mamba_backends_cpu.ops._common import compute_dtype, live_slots


def _tied(A: Tensor, dt: Tensor, dt_bias: Tensor | None) -> bool:
    """Mamba2's layout: A, dt and dt_bias broadcast over ``(P, N)`` through zero strides."""
    return (
        A.stride(-1) == 0
        and A.stride(-2) == 0
        and dt.stride(-1) == 0
        and (dt_bias is None or dt_bias.stride(-1) == 0)
    )


def _native_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    z: Tensor | None,
    dt_softplus: bool,
    state_batch_indices: Tensor | None,
    dst_state_batch_indices: Tensor | None,
    null_block_id: int | None,
    out: Tensor | None,
    heads_form: bool,
    contract: tuple[Any, ...],
) -> Tensor:
    """One decode token per request through the fused kernel (heads-form tensors, 4-D state).

    The metadata was checked by the validator; the kernel checks the slot values before any
    write and skips pad/null slots itself, so the Python side issues almost no tensor ops
    (decode is latency-bound at small batches). ``contract``: the op's arguments for the
    validator, which names the bad argument when the kernel refuses its slots.
    """

    def col0(t: Tensor | None) -> Tensor | None:
        return t if t is None or t.dim() == 1 else t[:, 0]  # int32/int64, read via strides

    src = col0(state_batch_indices)
    dst = col0(dst_state_batch_indices) if dst_state_batch_indices is not None else src
    pool, scatter = state, None
    if (
        src is not None
        and dst is not None
        and dst is not src
        and _reads_a_written_slot(src, dst, null_block_id)
    ):
        # The kernel updates in place, but here a row writes another row's source: it runs on
        # copies of the sources, scattered afterwards (all reads happen before any write).
        check_selective_state_update_args(*contract)  # staging indexes with the slot values
        state, src, scatter = _stage_sources(pool, src, dst, null_block_id)
        dst = src
    tied = _tied(A, dt, dt_bias)
    if not tied:  # per-element dt: bias and softplus vectorised here, not per element in C
        dt = dt.float() + dt_bias.float() if dt_bias is not None else dt.float()
        dt = F.softplus(dt) if dt_softplus else dt
        dt_bias, dt_softplus = None, False
    if out is None:
        out = torch.empty_like(x if heads_form else x.squeeze(1))
    out4 = out if heads_form else out.unsqueeze(1)
    # The kernel reads x, dt, B, C, D, z and writes out in their own dtypes (fp32 math).
    rc = _native.ssu(
        state, src, dst, PAD_SLOT_ID, null_block_id, x, dt, dt_bias, dt_softplus, A, B, C, D,
        z, out4, tied, check_slots=scatter is None,
    )  # fmt: skip
    if rc == _build.BADINDEX:  # nothing was written: let the validator name the argument
        check_selective_state_update_args(*contract)
        raise _build.NativeKernelError("selective_state_update: the kernel refused the slots")
    if scatter is not None and scatter[0].numel():
        pool.index_put_((scatter[1],), state[scatter[0]])
    return out


def _live(slot: int, null_block_id: int | None) -> bool:
    return slot != PAD_SLOT_ID and slot != null_block_id


def _reads_a_written_slot(src: Tensor, dst: Tensor, null_block_id: int | None) -> bool:
    """Whether a row's (live) destination is the source of another row that runs."""
    s, d = src.tolist(), dst.tolist()
    if s == d:
        return False  # in place (destinations are unique, so the sources are too)
    readers: dict[int, int] = {}
    for a in s:
        if _live(a, null_block_id):
            readers[a] = readers.get(a, 0) + 1
    for a, b in zip(s, d, strict=True):
        if _live(a, null_block_id) and _live(b, null_block_id):
            if readers.get(b, 0) - (1 if a == b else 0) > 0:
                return True
    return False


def _stage_sources(
    state: Tensor, src: Tensor, dst: Tensor, null_block_id: int | None
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """Copies of the rows' source states as a pool of their own (slot ``1 + i`` for row ``i``,
    pad for rows that are skipped), the rows' slots in it, and where to scatter the results:
    ``(rows of the copy pool, destination slots of the original pool)``."""
    s, d = src.tolist(), dst.tolist()
    rows = [i for i, a in enumerate(s) if _live(a, null_block_id)]
    work = torch.empty((len(s) + 1, *state.shape[1:]), dtype=state.dtype)
    if rows:
        work[torch.tensor(rows) + 1] = state[torch.tensor([s[i] for i in rows])]
    slots = torch.tensor([i + 1 if i in set(rows) else PAD_SLOT_ID for i in range(len(s))])
    out_rows = [i for i in rows if _live(d[i], null_block_id)]
    scatter = (
        torch.tensor(out_rows, dtype=torch.int64) + 1,
        torch.tensor([d[i] for i in out_rows], dtype=torch.int64),
    )
    return work, slots, scatter


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
    """Selective state update; ``state`` is updated in place, ``out`` receives ``y``.

    Args:
        state: ``(slots, H, P, N)`` or ``(slots, dim, N)``, any strides, fp32/bf16/fp16.
        x, dt, z: ``(b, H, P)`` or ``(b, dim)`` (``b`` tokens; one per request unless
            ``cu_seqlens`` is given).
        A: ``(H, P, N)`` or ``(dim, N)``.
        B, C: ``(b, G, N)`` or ``(b, N)``; head ``h`` uses group ``h // (H/G)``.
        D, dt_bias: ``(H, P)`` or ``(dim,)``, or None.
        state_batch_indices: ``(R,)`` or ``(R, T)`` source slots (identity when None);
            ``dst_state_batch_indices`` the destination slots (default: the same).
        null_block_id: slot id skipped (never read nor written), None for none.
        out: ``(b, H, P)`` like ``x``; allocated when None.
        num_accepted_tokens: ``(R,)`` speculative decoding: the initial state is read from
            column ``num_accepted_tokens-1`` of ``state_batch_indices`` and the state after
            token ``i`` is written to ``dst_state_batch_indices[:, i]``.
        cu_seqlens: ``(R+1,)`` token offsets of the requests (varlen form).

    Returns:
        ``out``.
    """
    contract = (
        state, x, dt, A, B, C, D, dt_bias, z, state_batch_indices, dst_state_batch_indices,
        null_block_id, out, num_accepted_tokens, cu_seqlens,
    )  # fmt: skip
    # Metadata first; the slot values are checked by the fused kernel before it writes, or
    # below for the other paths.
    check_selective_state_update_args(*contract, check_values=False)
    if enable_stochastic_rounding:
        raise NotImplementedError(
            "selective_state_update: argument 'enable_stochastic_rounding' is not supported"
        )
    heads_form = state.dim() == 4
    if not heads_form:
        state = state.unsqueeze(1)
        x, dt, A = x.unsqueeze(1), dt.unsqueeze(1), A.unsqueeze(0)
        B = B.unsqueeze(1) if B.dim() == 2 else B
        C = C.unsqueeze(1) if C.dim() == 2 else C
        D = D.unsqueeze(0) if D is not None and D.dim() == 1 else D
        dt_bias = dt_bias.unsqueeze(0) if dt_bias is not None and dt_bias.dim() == 1 else dt_bias
        z = z.unsqueeze(1) if z is not None else None
    nslots, H, P, N = state.shape
    if (
        num_accepted_tokens is None
        and cu_seqlens is None
        and compute_dtype(x, state) == torch.float32
        and _native.ssu_supported(state)
        and _native.available()
    ):
        return _native_step(
            state, x, dt, A, B, C, D, dt_bias, z, dt_softplus, state_batch_indices,
            dst_state_batch_indices, null_block_id, out, heads_form, contract,
        )  # fmt: skip
    check_selective_state_update_args(*contract)
    nb = x.shape[0]
    G = B.shape[1]
    # Requests, their token rows and their source/destination slots (checked by the contract).
    if cu_seqlens is not None:
        cu = cu_seqlens.to(torch.int64)
        R = cu.numel() - 1
    else:
        R = nb
        cu = torch.arange(nb + 1, dtype=torch.int64)
    lens = cu[1:] - cu[:-1]
    Lmax = int(lens.max()) if R > 0 else 0

    def _cols(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        t2 = t.to(torch.int64)
        return (t2.unsqueeze(1) if t2.dim() == 1 else t2)[:R]

    src = _cols(state_batch_indices)
    dst = _cols(dst_state_batch_indices)
    if dst is None:
        dst = src
    spec = num_accepted_tokens is not None
    if spec:
        assert src is not None and dst is not None and num_accepted_tokens is not None
        nacc = num_accepted_tokens.to(torch.int64).reshape(-1)
        col = (nacc - 1).clamp(min=0, max=src.shape[1] - 1)
        src_slot = src.gather(1, col[:, None]).reshape(-1)
    elif src is not None:
        src_slot = src[:, 0]
    else:
        src_slot = torch.arange(R, dtype=torch.int64)
    dst_slot = dst[:, 0] if dst is not None else src_slot
    all_ok = torch.ones(R, dtype=torch.bool)
    src_ok = live_slots(src_slot, PAD_SLOT_ID, null_block_id) if src is not None else all_ok
    dst_ok = live_slots(dst_slot, PAD_SLOT_ID, null_block_id) if dst is not None else all_ok

    ctype = compute_dtype(x, state)
    if out is None:
        out = torch.empty_like(x if heads_form else x.squeeze(1))
    out4 = out if heads_form else out.unsqueeze(1)
    tied = _tied(A, dt, dt_bias)
    all_src = bool(src_ok.all())
    safe_src = src_slot if all_src else torch.where(src_ok, src_slot, 0)
    h = state[safe_src].to(ctype)  # (R, H, P, N), a fresh copy
    if not all_src:
        h.masked_fill_(~src_ok.view(R, 1, 1, 1), 0.0)
    rep = H // G
    A_c = A[:, 0, 0].to(ctype) if tied else A.to(ctype)
    Dc = D.to(ctype) if D is not None else None
    hv = h.view(R * H, P, N)
    for i in range(Lmax):
        rows = cu[:-1] + i
        active = lens > i
        all_active = bool(active.all())
        h_old = None
        if not all_active:
            # Finished (or empty) requests read row 0 (any valid row; a request at the end
            # of the batch may start at T) and keep their state through where(), never
            # through a product with 0 (NaN * 0 is NaN; with out=x, rows already written
            # hold outputs).
            rows = torch.where(active, rows, 0)
            h_old = h.clone()
        xi = x[rows].to(ctype)  # (R, H, P)
        if tied:
            dti = dt[rows][:, :, 0].to(ctype)  # (R, H)
            if dt_bias is not None:
                dti = dti + dt_bias[:, 0].to(ctype)
        else:
            dti = dt[rows].to(ctype)
            if dt_bias is not None:
                dti = dti + dt_bias.to(ctype)
        if dt_softplus:
            dti = F.softplus(dti)
        Bi = B[rows].to(ctype)
        Ci = C[rows].to(ctype)
        if rep > 1:
            Bi = Bi.repeat_interleave(rep, dim=1)
            Ci = Ci.repeat_interleave(rep, dim=1)
        if tied:
            h.mul_(torch.exp(dti * A_c).view(R, H, 1, 1))
            xdt = xi * dti[:, :, None]
        else:
            h.mul_(torch.exp(dti[..., None] * A_c))
            xdt = xi * dti
        hv.baddbmm_(xdt.reshape(R * H, P, 1), Bi.reshape(R * H, 1, N))
        if h_old is not None:
            h.copy_(torch.where(active.view(R, 1, 1, 1), h, h_old))
        y = torch.bmm(hv, Ci.reshape(R * H, N, 1)).view(R, H, P)
        if Dc is not None:
            y.addcmul_(xi, Dc)
        if z is not None:
            y.mul_(F.silu(z[rows].to(ctype)))
        write = active & src_ok
        if bool(write.all()):
            out4[rows] = y.to(out4.dtype)
        else:
            out4[rows[write]] = y[write].to(out4.dtype)
        if spec:
            assert dst is not None
            col_i = dst[:, i]
            w = active & src_ok & (col_i != PAD_SLOT_ID)
            if null_block_id is not None:
                w &= col_i != null_block_id
            if bool(w.any()):
                state.index_put_((col_i[w],), h[w].to(state.dtype))
    if not spec:
        w = dst_ok & src_ok & (lens > 0)
        if bool(w.all()):
            state.index_put_((dst_slot,), h.to(state.dtype))
        elif bool(w.any()):
            state.index_put_((dst_slot[w],), h[w].to(state.dtype))
    return out
