"""CPU kernels: Mamba2 SSD chunk scan (varlen prefill) as chunked matmuls.

The caller's chunks (``cu_chunk_seqlens``) are cut into internal blocks of at most
``block`` tokens, a tuning entry (:mod:`mamba_backends.tuning`, CPU table
``mamba_chunk_scan_combined_varlen.json``); smaller blocks mean fewer quadratic flops, and the
result does not depend on the cut. Per block, with ``a = dt*A`` and ``s = cumsum(a)`` inside
the block:

* intra-block: ``y_t += sum_{u<=t} (C_t . B_u) exp(s_t - s_u) dt_u x_u`` (one masked
  ``(L, L)`` decay per head, then a batched matmul);
* block state from zero: ``S_blk = sum_u exp(s_end - s_u) dt_u x_u B_u^T`` (one matmul);
* state passing: ``S_in(next) = exp(s_end) S_in + S_blk``, a loop over the block rank inside a
  sequence (all sequences at once, so it runs ``max blocks per sequence`` times);
* inter-block: ``y_t += exp(s_t) C_t S_in`` (one matmul).

Then ``y += D*x`` and ``y *= silu(z)``. Everything runs in fp32 (fp64 for fp64 inputs).

When the native kernels are available (see ``_native``), fp32 work runs instead as one fused
recurrence per (sequence, head) with the ``(P, N)`` state in cache: on a CPU that single pass
beats the matmul form, whose intermediates do not stay in cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import check_ssd_varlen_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_cpu.native import ssm as _native
from mamba_backends_cpu.ops._common import all_finite, compute_dtype, live_slots, spec_exp
from mamba_backends_cpu.tuning import cpu_config, dtype_name


def _block_len(dtype: torch.dtype, P: int, N: int, chunk_size: int) -> int:
    """Internal block length in tokens (CPU tuning table; any positive value gives the same
    result, 64 balances the quadratic intra-block term against the per-block matmuls)."""
    name = dtype_name(dtype)
    op = "mamba_chunk_scan_combined_varlen"
    return int(cpu_config(op, compute_dtype=name, P=P, N=N, chunk_size=chunk_size)["block"])


def _blocks(cu_chunk: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut chunks into blocks of at most ``block`` tokens.

    Returns:
        ``(start (nB,), length (nB,), chunk_of_block (nB,))`` int64.
    """
    c_start = cu_chunk[:-1]
    c_len = cu_chunk[1:] - c_start
    n_blk = (c_len + block - 1) // block
    chunk_of = torch.repeat_interleave(torch.arange(c_len.numel()), n_blk)
    first = torch.cumsum(n_blk, 0) - n_blk
    k = torch.arange(chunk_of.numel()) - first[chunk_of]
    start = c_start[chunk_of] + k * block
    length = torch.minimum(c_len[chunk_of] - k * block, torch.full_like(start, block))
    return start, length, chunk_of


def _group_matmul(a: Tensor, b: Tensor, G: int) -> Tensor:
    """``a (..., H, m, k) @ b (..., G, k, n)`` with head ``h`` using group ``h // (H/G)``."""
    H = a.shape[-3]
    lead = a.shape[:-3]
    a5 = a.reshape(*lead, G, H // G, a.shape[-2], a.shape[-1])
    out = torch.matmul(a5, b.unsqueeze(-3))
    return out.reshape(*lead, H, a.shape[-2], b.shape[-1])


#: Below this |cumulative log decay| inside a block, exp of a difference of cumulative sums is
#: accurate to ~3e-5 (2 fp32 ulps of 256) and is the fast form; beyond it, segment sums.
FAST_LOG_DECAY = 256.0


def segment_log_decays(x: Tensor) -> Tensor:
    """``x: [..., L]`` log decays -> ``[..., L, L]``: ``x_{j+1} + ... + x_i`` for ``i >= j``,
    ``-inf`` above the diagonal (masked before any ``exp``).

    The usual gates (cumulative sums within +/-256) take the cheap difference of cumulative
    sums; strong ones (a model's ``dt * A`` or GDN ``g`` reach -1e3 per token, -1e4 over a
    block, or ``-inf``) take :func:`segsum`, which never subtracts two large sums."""
    L = x.shape[-1]
    cs = torch.cumsum(x, dim=-1)
    if cs.numel() and bool(cs.abs().max() <= FAST_LOG_DECAY):
        causal = torch.ones(L, L, dtype=torch.bool).tril_()
        return (cs[..., :, None] - cs[..., None, :]).masked_fill_(~causal, float("-inf"))
    return segsum(x)


def segsum(x: Tensor) -> Tensor:
    """``x: [..., L]`` log decays -> ``[..., L, L]`` with ``[i, j] = x_{j+1} + ... + x_i`` for
    ``i >= j`` (0 on the diagonal) and ``-inf`` above it.

    Sums of the segment itself, never differences of cumulative sums: those lose every digit
    when the cumulative sum is large (-1e4 after a few strong decays) and give
    ``-inf - -inf = NaN`` after a decay of ``-inf``; ``exp`` never sees a positive value.
    """
    L = x.shape[-1]
    strict = torch.ones(L, L, dtype=torch.bool).tril_(-1)  # [l, j]: l > j
    terms = x[..., :, None].expand(*x.shape, L).masked_fill(~strict, 0.0)  # [..., l, j]
    seg = torch.cumsum(terms, dim=-2)  # [..., i, j] = sum over j < l <= i of x_l
    return seg.masked_fill_(~torch.ones(L, L, dtype=torch.bool).tril_(), float("-inf"))


def _exact(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    init: Tensor | None,
    cu: Tensor,
    cuc: Tensor,
    ctype: torch.dtype,
    out: Tensor,
) -> tuple[Tensor, Tensor]:
    """The spec's token recurrence (used when NaN/inf is among the inputs: a chunked form
    spreads a non-finite token to every earlier token of its block, as ``0 * inf``).

    ``dt: (T, H)`` processed. Writes ``out``; returns the final states ``(batch, H, P, N)``
    and the states after every chunk ``(nchunks, H, P, N)``.
    """
    _, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    heads_g = torch.arange(H) // (H // G)
    ends = {int(e): c for c, e in enumerate(cuc[1:].tolist())}
    nseq = cu.numel() - 1
    final = torch.zeros(nseq, H, P, N, dtype=ctype)
    chunks = torch.zeros(len(ends), H, P, N, dtype=ctype)
    Dc = None if D is None else (D.to(ctype)[:, None] if D.dim() == 1 else D.to(ctype))
    for b in range(nseq):
        st = torch.zeros(H, P, N, dtype=ctype) if init is None else init[b].to(ctype)
        for t in range(int(cu[b]), int(cu[b + 1])):
            dt_t = dt[t].to(ctype)
            x_t = x[t].to(ctype)
            decay = spec_exp(A * dt_t)[:, None, None]
            st = decay * st + (dt_t[:, None] * x_t)[..., None] * B[t].to(ctype)[heads_g][:, None]
            y = (st * C[t].to(ctype)[heads_g][:, None]).sum(-1)
            if Dc is not None:
                y = y + Dc * x_t
            if z is not None:
                y = y * F.silu(z[t].to(ctype))
            out[t] = y.to(out.dtype)
            if t + 1 in ends:
                chunks[ends[t + 1]] = st
        final[b] = st
    return final, chunks


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
    """Varlen SSD scan; writes ``out`` in place and returns the states (or scatters them).

    Args:
        x: ``(T, H, P)``.
        dt: ``(T, H)``.
        A: ``(H,)``.
        B, C: ``(T, G, N)``.
        chunk_size: the chunk size the metadata was cut with (a power of two).
        cu_seqlens: ``(batch+1,)`` sequence offsets.
        cu_chunk_seqlens: ``(nchunks+1,)`` chunk offsets; no chunk spans two sequences.
        last_chunk_indices: ``(batch,)`` last chunk of each sequence.
        seq_idx: ``(nchunks,)`` sequence of each chunk.
        out: ``(T, H, P)`` output, written in place.
        D: ``(H, P)`` or ``(H,)``; z: ``(T, H, P)``; dt_bias: ``(H,)``.
        initial_states: ``(batch, H, P, N)`` or None (zeros).
        final_states_out: ``(slots, H, P, N)``, any strides (vLLM 0.33): the final state of
            sequence ``b`` is written to slot ``final_state_indices[b]`` (``(batch,)``; slot
            ``b`` without it; pad ``-1`` and null ``0`` entries are skipped).

    Tokens past ``cu_seqlens[-1]`` (a padded tail) are not read, and their rows of ``out`` are
    left as they were.

    Returns:
        ``(batch, H, P, N)`` state after each sequence's last chunk, or ``(nchunks, H, P, N)``
        after every chunk when ``return_intermediate_states``; dtype ``state_dtype`` (else
        ``C.dtype``). ``None`` when ``final_states_out`` is given.
    """
    check_ssd_varlen_args(
        x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx,
        out, D, z, dt_bias, initial_states, dt_limit, state_dtype, return_intermediate_states,
        final_states_out, final_state_indices,
    )  # fmt: skip
    T, H, P = x.shape
    _, G, N = B.shape
    cu = cu_seqlens.to(torch.int64)
    Tv = int(cu[-1])
    if Tv < T or final_states_out is not None:
        # Padded tail: run the real tokens only. vLLM 0.33: scatter the final states (kept in
        # fp32 or wider until the cast to the pool's dtype).
        sdt = state_dtype
        if final_states_out is not None:
            sdt = torch.promote_types(final_states_out.dtype, torch.float32)
        states = mamba_chunk_scan_combined_varlen(
            x[:Tv], dt[:Tv], A, B[:Tv], C[:Tv], chunk_size, cu_seqlens, cu_chunk_seqlens,
            last_chunk_indices, seq_idx, out[:Tv], D, None if z is None else z[:Tv], dt_bias,
            initial_states, dt_softplus, dt_limit, return_intermediate_states, sdt,
        )  # fmt: skip
        if final_states_out is None:
            return states
        assert states is not None
        if final_state_indices is None:
            slots = torch.arange(states.shape[0], dtype=torch.int64)
        else:
            slots = final_state_indices.to(torch.int64)
        live = torch.ones(slots.numel(), dtype=torch.bool)
        if final_state_indices is not None:
            live = live_slots(slots, PAD_SLOT_ID, NULL_BLOCK_ID)
        final_states_out.index_put_((slots[live],), states[live].to(final_states_out.dtype))
        return None
    cuc = cu_chunk_seqlens.to(torch.int64)
    sidx = seq_idx.to(torch.int64)
    last = last_chunk_indices.to(torch.int64)
    nseq, nch = cu.numel() - 1, cuc.numel() - 1
    ctype = compute_dtype(x, dt, B, C, initial_states)
    sdtype = state_dtype if state_dtype is not None else C.dtype

    # dt processing, per token and head.
    dtc = dt.to(ctype)
    if dt_bias is not None:
        dtc = dtc + dt_bias.to(ctype)
    if dt_softplus:
        dtc = F.softplus(dtc)
    dtc = dtc.clamp(min=float(dt_limit[0]), max=float(dt_limit[1]))  # always, as vLLM's Triton
    Ac = A.to(ctype)

    if ctype == torch.float32 and _native.available():
        # Fused recurrence per (sequence, head): one pass, state in cache.
        D2 = None
        if D is not None:
            D2 = D[:, None].expand(H, P) if D.dim() == 1 else D
        chunk_first = torch.cat([torch.zeros(1, dtype=torch.int64), last[:-1] + 1])
        y_n, final, chunks = _native.ssd(
            x, dtc, Ac, B, C, D2, z, initial_states, cu, cuc, chunk_first,
            return_intermediate_states,
        )  # fmt: skip
        out.copy_(y_n)
        res_n = chunks if chunks is not None else final
        return res_n.to(sdtype)

    if not all_finite(x, dtc, Ac, B, C, D, z, initial_states):
        # NaN/inf among the inputs: the spec's token recurrence (see _exact)
        res_e = _exact(x, dtc, Ac, B, C, D, z, initial_states, cu, cuc, ctype, out)
        return (res_e[1] if return_intermediate_states else res_e[0]).to(sdtype)

    # Internal blocks, padded to (nB, L) token slots.
    L = min(_block_len(ctype, x.shape[-1], B.shape[-1], chunk_size), chunk_size)
    bstart, blen, chunk_of = _blocks(cuc, L)
    nB = bstart.numel()
    seq_of = sidx[chunk_of]
    full = bool((blen == L).all())
    if full:
        xb = x.to(ctype).reshape(nB, L, H, P)
        dtb = dtc.reshape(nB, L, H)
        Bb = B.to(ctype).reshape(nB, L, G, N)
        Cb = C.to(ctype).reshape(nB, L, G, N)
        tok = None
    else:
        pos = torch.arange(L)
        valid = pos[None, :] < blen[:, None]
        tok = (bstart[:, None] + pos[None, :]).clamp(max=T - 1)
        m = valid.to(ctype)
        xb = x[tok].to(ctype)
        dtb = dtc[tok] * m[..., None]  # dt = 0 on padding: no decay, no input
        Bb = B[tok].to(ctype)
        Cb = C[tok].to(ctype)
    dA = (dtb * Ac).transpose(1, 2)  # (nB, H, L)
    a_h = torch.cumsum(dA, dim=-1)  # (nB, H, L)
    a_end = a_h[:, :, -1]  # (nB, H)

    # Intra-block (quadratic) term; decays from segment sums (never exp of a difference of
    # cumulative sums, which cancels every digit once dt * A sums to -1e4).
    CB = torch.matmul(Cb.permute(0, 2, 1, 3), Bb.permute(0, 2, 3, 1))  # (nB, G, L, L)
    seg = segment_log_decays(dA)  # (nB, H, L, L), -inf above the diagonal
    to_end = seg[:, :, -1, :].exp()  # (nB, H, L): exp(a_end - a_u)
    Mx = seg.exp_().mul_(dtb.transpose(1, 2)[:, :, None, :])  # (nB, H, L, L)
    Mx = Mx.view(nB, G, H // G, L, L).mul_(CB[:, :, None]).view(nB, H, L, L)
    xh = xb.permute(0, 2, 1, 3)  # (nB, H, L, P)
    y = torch.matmul(Mx, xh)  # (nB, H, L, P)

    # Block states from a zero start: S_blk = (x * w)^T B with w = exp(a_end - a) * dt.
    w = to_end.mul_(dtb.transpose(1, 2))  # (nB, H, L)
    xw = (xh * w[..., None]).transpose(2, 3)  # (nB, H, P, L)
    S_blk = _group_matmul(xw, Bb.permute(0, 2, 1, 3), G)  # (nB, H, P, N)

    # State passing: S_in for every block, in block-rank order inside each sequence.
    first_blk = torch.ones(nB, dtype=torch.bool)
    if nB > 1:
        first_blk[1:] = seq_of[1:] != seq_of[:-1]
    grp = torch.cumsum(first_blk.to(torch.int64), 0) - 1
    grp_start = torch.nonzero(first_blk).reshape(-1)
    rank = torch.arange(nB) - grp_start[grp]
    if initial_states is not None:
        S_prev = initial_states.to(ctype).clone()
    else:
        S_prev = torch.zeros(nseq, H, P, N, dtype=ctype)
    S_in = torch.empty(nB, H, P, N, dtype=ctype)
    decay_end = torch.exp(a_end)  # (nB, H)
    n_rank = int(rank.max()) + 1 if nB else 0
    for r in range(n_rank):
        blk = torch.nonzero(rank == r).reshape(-1)
        sq = seq_of[blk]
        cur = S_prev[sq]
        S_in[blk] = cur
        S_prev[sq] = cur.mul_(decay_end[blk][:, :, None, None]).add_(S_blk[blk])

    # Inter-block term: y_t += exp(a_t) * C_t S_in.
    y_off = _group_matmul(S_in, Cb.permute(0, 2, 3, 1), G)  # (nB, H, P, L)
    y.addcmul_(y_off.transpose(2, 3), a_h.exp()[..., None])
    yt = y.permute(0, 2, 1, 3)  # (nB, L, H, P)
    if D is not None:
        Dc = D.to(ctype)
        Dc = Dc[:, None] if Dc.dim() == 1 else Dc
        yt = yt + xb * Dc
    if z is not None:
        zb = z.to(ctype).reshape(nB, L, H, P) if tok is None else z[tok].to(ctype)
        yt = yt * F.silu(zb)
    if tok is None:
        out.copy_(yt.reshape(T, H, P))
    else:
        valid_t = torch.arange(L)[None, :] < blen[:, None]
        out.index_copy_(0, tok[valid_t], yt[valid_t].to(out.dtype))

    # States after each caller chunk: its last block's S_in advanced by that block.
    last_blk = torch.cumsum(torch.bincount(chunk_of, minlength=nch), 0) - 1  # (nch,)
    want = torch.arange(nch) if return_intermediate_states else last
    if nch == 0:
        res = torch.zeros(want.numel(), H, P, N, dtype=ctype)
    else:
        lb = last_blk[want]
        res = S_in[lb].mul_(decay_end[lb][:, :, None, None]).add_(S_blk[lb])
    return res.to(sdtype)
