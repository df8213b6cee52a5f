"""CPU kernels: Mamba2 SSD chunk scan (varlen prefill) as chunked matmuls.

The caller's chunks (``cu_chunk_seqlens``) are cut into internal blocks of at most
``_BLOCK`` tokens (smaller blocks mean fewer quadratic flops; the result does not depend on
the cut). Per block, with ``a = dt*A`` and ``s = cumsum(a)`` inside the block:

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

from mamba_backends.validate import check_ssd_varlen_args
from mamba_backends_cpu.ops import _native
from mamba_backends_cpu.ops._common import as_index, compute_dtype, require

#: Internal block length (tokens). 64 balances the quadratic intra-block term against the
#: per-block state matmuls on CPUs; any positive value gives the same result.
_BLOCK = 64


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
) -> Tensor:
    """Varlen SSD scan; writes ``out`` in place and returns the states.

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

    Returns:
        ``(batch, H, P, N)`` state after each sequence's last chunk, or ``(nchunks, H, P, N)``
        after every chunk when ``return_intermediate_states``; dtype ``state_dtype`` (else
        ``C.dtype``).
    """
    check_ssd_varlen_args(
        x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx,
        out, D, z, dt_bias, initial_states, dt_limit, state_dtype,
    )  # fmt: skip
    require(x.dim() == 3, f"x must be (T, H, P), got {tuple(x.shape)}")
    T, H, P = x.shape
    require(dt.shape == (T, H), f"dt must be ({T}, {H}), got {tuple(dt.shape)}")
    require(A.shape == (H,), f"A must be ({H},), got {tuple(A.shape)}")
    require(B.dim() == 3 and B.shape[0] == T, f"B must be ({T}, G, N), got {tuple(B.shape)}")
    _, G, N = B.shape
    require(G > 0 and H % G == 0, f"nheads {H} must be divisible by ngroups {G}")
    require(C.shape == B.shape, f"C must match B {tuple(B.shape)}, got {tuple(C.shape)}")
    require(out.shape == x.shape, f"out must be {tuple(x.shape)}, got {tuple(out.shape)}")
    require(z is None or z.shape == x.shape, "z must match x")
    require(D is None or D.shape in ((H, P), (H,)), f"D must be ({H}, {P}) or ({H},)")
    require(dt_bias is None or dt_bias.shape == (H,), f"dt_bias must be ({H},)")
    cu = as_index(cu_seqlens, "cu_seqlens").cpu()
    cuc = as_index(cu_chunk_seqlens, "cu_chunk_seqlens").cpu()
    sidx = as_index(seq_idx, "seq_idx").cpu()
    last = as_index(last_chunk_indices, "last_chunk_indices").cpu()
    nseq, nch = cu.numel() - 1, cuc.numel() - 1
    require(int(cu[0]) == 0 and int(cu[-1]) == T, f"cu_seqlens must span 0..{T}")
    require(int(cuc[0]) == 0 and int(cuc[-1]) == T, f"cu_chunk_seqlens must span 0..{T}")
    require(bool((cuc[1:] > cuc[:-1]).all()), "cu_chunk_seqlens: every chunk needs a token")
    require(sidx.shape == (nch,), f"seq_idx must be ({nch},), got {tuple(sidx.shape)}")
    require(last.shape == (nseq,), f"last_chunk_indices must be ({nseq},)")
    if nch:
        require(bool(((sidx >= 0) & (sidx < nseq)).all()), "seq_idx out of range")
        inside = (cuc[:-1] >= cu[sidx]) & (cuc[1:] <= cu[sidx + 1])
        require(bool(inside.all()), "cu_chunk_seqlens: a chunk leaves the sequence seq_idx names")
        require(bool((sidx[1:] >= sidx[:-1]).all()), "seq_idx must be non-decreasing")
    require(bool(((last >= 0) & (last < max(nch, 1))).all()), "last_chunk_indices out of range")
    if initial_states is not None:
        require(
            initial_states.shape == (nseq, H, P, N),
            f"initial_states must be ({nseq}, {H}, {P}, {N}), got {tuple(initial_states.shape)}",
        )
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

    # Internal blocks, padded to (nB, L) token slots.
    L = min(_BLOCK, chunk_size)
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
    a_cs = torch.cumsum(dtb * Ac, dim=1)  # (nB, L, H)
    a_h = a_cs.transpose(1, 2)  # (nB, H, L)
    a_end = a_h[:, :, -1]  # (nB, H)

    # Intra-block (quadratic) term.
    CB = torch.matmul(Cb.permute(0, 2, 1, 3), Bb.permute(0, 2, 3, 1))  # (nB, G, L, L)
    causal = torch.ones(L, L, dtype=torch.bool).tril_()
    seg = (a_h[:, :, :, None] - a_h[:, :, None, :]).masked_fill_(~causal, float("-inf"))
    Mx = seg.exp_().mul_(dtb.transpose(1, 2)[:, :, None, :])  # (nB, H, L, L)
    Mx = Mx.view(nB, G, H // G, L, L).mul_(CB[:, :, None]).view(nB, H, L, L)
    xh = xb.permute(0, 2, 1, 3)  # (nB, H, L, P)
    y = torch.matmul(Mx, xh)  # (nB, H, L, P)

    # Block states from a zero start: S_blk = (x * w)^T B with w = exp(a_end - a) * dt.
    w = torch.exp(a_end[:, :, None] - a_h).mul_(dtb.transpose(1, 2))  # (nB, H, L)
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
