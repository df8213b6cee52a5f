"""CPU kernels: Mamba1 selective scan (varlen prefill).

``h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t^T`` per channel ``d`` (state ``(D, N)``),
``y_t = h_t C_t + D u_t``, ``y_t *= silu(z_t)``; the final ``h`` of every sequence is written
to its slot of ``ssm_states`` in place and ``y`` overwrites ``z`` (or ``delta`` without ``z``;
with ``z``, ``delta`` receives the ungated ``y``), as in vLLM.

Pure-PyTorch path (chunked, no loop over tokens): every sequence is cut into blocks of ``L``
tokens; all sequences' ``k``-th blocks are processed together. Inside a block, with the log
decay ``s_t = cumsum(dt) * A`` taken relative to the block's first token (``<= 0``),
``h_t = exp(s_t) * (h_in' + cumsum_u(exp(-s_u) * dt_u u_u B_u))``. ``L`` is chosen so that
``-s`` stays below an overflow bound in every block (``exp(-s_u)`` finite; ``L = 1`` always
is), which keeps the form exact. The state carries across blocks. The candidate lengths are
the ``block_lengths`` tuning entry (:mod:`mamba_backends.tuning`, CPU table
``selective_scan_fn.json``).
A fused native kernel (``_native``) replaces this path when it is available.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import check_not_supported, check_selective_scan_args
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_cpu.native import ssm as _native
from mamba_backends_cpu.ops._common import compute_dtype, live_slots
from mamba_backends_cpu.tuning import cpu_config, dtype_name

logger = logging.getLogger(__name__)


def _block_lengths(dtype: torch.dtype, N: int) -> list[int]:
    """Candidate block lengths of the PyTorch scan, longest first (CPU tuning table)."""
    cfg = cpu_config("selective_scan_fn", compute_dtype=dtype_name(dtype), N=N)
    return sorted(cfg["block_lengths"], reverse=True)


def _pick_block(
    dt: Tensor, amax: Tensor, seq_of: Tensor, pos: Tensor, limit: float, blocks: list[int]
) -> int:
    """Largest of ``blocks`` whose per-block total log decay stays under ``limit`` (else 1)."""
    w = dt * amax  # (T, D) decay rate per token and channel
    for L in blocks:
        if L == 1:
            return 1
        key = seq_of * (int(pos.max()) // L + 1) + pos // L
        sums = torch.zeros(int(key.max()) + 1, w.shape[1], dtype=w.dtype)
        sums.index_add_(0, key, w)
        if float(sums.max()) <= limit:
            return L
    return 1


def _scan_torch(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    Bm: Tensor,
    Cm: Tensor,
    h0: Tensor,
    qsl: Tensor,
) -> tuple[Tensor, Tensor]:
    """Chunked scan of packed sequences (compute dtype).

    Args:
        u, dt: ``(T, Dm)``, dt already biased/softplussed.
        A: ``(Dm, N)``.
        Bm, Cm: ``(T, G, N)``.
        h0: ``(S, Dm, N)`` initial states of the ``S`` sequences.
        qsl: ``(S+1,)`` int64 offsets.

    Returns:
        ``y (T, Dm)`` (without D and z) and the final states ``(S, Dm, N)``.
    """
    T, Dm = u.shape
    N = A.shape[1]
    G = Bm.shape[1]
    S = qsl.numel() - 1
    lens = qsl[1:] - qsl[:-1]
    seq_of = torch.repeat_interleave(torch.arange(S), lens, output_size=T)
    pos = torch.arange(T) - qsl[:-1][seq_of]
    limit = 60.0 if u.dtype != torch.float64 else 600.0
    amax = A.abs().amax(dim=1)
    L = _pick_block(dt, amax, seq_of, pos, limit, _block_lengths(u.dtype, N)) if T else 1
    y = torch.empty(T, Dm, dtype=u.dtype)
    h = h0.clone()
    nblk = (lens + L - 1) // L
    n_rank = int(nblk.max()) if S else 0
    ar = torch.arange(L)
    Dg = Dm // G
    for r in range(n_rank):
        sq = torch.nonzero(nblk > r).reshape(-1)
        start = qsl[sq] + r * L
        blen = torch.clamp(lens[sq] - r * L, max=L)
        valid = ar[None, :] < blen[:, None]  # (nb, L)
        tok = torch.where(valid, start[:, None] + ar[None, :], start[:, None])
        nb = sq.numel()
        dtb = dt[tok] * valid[..., None]  # (nb, L, Dm)
        # Decay relative to the block's first token (so L = 1 never divides): the cumulative
        # sum of the later tokens' dt, never cumsum - dt[0] (inf - inf is NaN for dt = inf).
        cs = torch.cumsum(torch.cat([torch.zeros_like(dtb[:, :1]), dtb[:, 1:]], dim=1), dim=1)
        E = torch.exp(cs[..., None] * A)  # (nb, L, Dm, N), in (0, 1]
        xb = (dtb * u[tok]).view(nb, L, G, Dg, 1)
        Bb = Bm[tok].view(nb, L, G, 1, N)
        w = (xb * Bb).view(nb, L, Dm, N).div_(E)
        w[:, 0].addcmul_(torch.exp(dtb[:, 0, :, None] * A), h[sq])
        hs = torch.cumsum(w, dim=1).mul_(E)  # states after every token
        Cb = Cm[tok].view(nb, L, G, N, 1)
        yb = torch.matmul(hs.view(nb, L, G, Dg, N), Cb).view(nb, L, Dm)
        y[tok[valid]] = yb[valid]
        h[sq] = hs[torch.arange(nb), blen - 1]
    return y, h


def _write_tokens(dst: Tensor, rows: Tensor, y: Tensor, varlen: bool, all_rows: bool) -> None:
    """Write ``y (n, Dm)`` into token ``rows`` of ``dst`` (``(Dm, T)`` or ``(B, Dm, L)``)."""
    y = y.to(dst.dtype)
    if varlen:
        if all_rows:
            dst.t().copy_(y)
        else:
            dst.t().index_copy_(0, rows, y)
    else:
        Lq = dst.shape[2]
        dst.transpose(1, 2)[rows // Lq, rows % Lq] = y


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
    """Mamba1 selective scan over packed sequences, states updated in place.

    Args:
        u, delta, z: ``(Dm, T)`` with ``query_start_loc``, else ``(batch, Dm, L)``.
        ssm_states: ``(slots, Dm, N)``, any strides, fp32/bf16/fp16.
        A: ``(Dm, N)``.
        B, C: ``(G, N, T)`` or ``(N, T)`` (varlen), ``(batch, G, N, L)`` or ``(batch, N, L)``.
        D, delta_bias: ``(Dm,)`` or None.
        query_start_loc: ``(batch+1,)`` offsets.
        cache_indices: ``(batch,)`` slots (identity when None); null/pad entries are skipped
            (state untouched, their output tokens not written).
        has_initial_state: ``(batch,)`` bool or None.
        block_size, cu_chunk_seqlen, last_chunk_indices: prefix-caching metadata, consulted
            only together with the ``block_idx_*`` arguments, which are not supported.

    Returns:
        ``z`` (or ``delta`` when ``z`` is None), overwritten with the output.
    """
    check_not_supported(
        "selective_scan_fn",
        block_idx_first_scheduled_token=block_idx_first_scheduled_token,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
    )
    check_selective_scan_args(
        u, ssm_states, delta, A, B, C, D, z, delta_bias, query_start_loc, cache_indices,
        has_initial_state, null_block_id,
    )  # fmt: skip
    varlen = query_start_loc is not None
    if varlen:
        assert query_start_loc is not None
        Dm, T = u.shape
        qsl = query_start_loc.to(torch.int64)
        Tv = int(qsl[-1])
        if Tv < T:
            # A padded tail: the tokens past the last sequence are padding, left untouched.
            selective_scan_fn(
                u[:, :Tv], ssm_states, delta[:, :Tv], A, B[..., :Tv], C[..., :Tv], D,
                None if z is None else z[:, :Tv], delta_bias, delta_softplus, query_start_loc,
                cache_indices, has_initial_state, null_block_id,
            )  # fmt: skip
            return z if z is not None else delta
        Bv = B.unsqueeze(0) if B.dim() == 2 else B
        Cv = C.unsqueeze(0) if C.dim() == 2 else C
        uT, dT = u.t(), delta.t()
        zT = z.t() if z is not None else None
        BT, CT = Bv.permute(2, 0, 1), Cv.permute(2, 0, 1)  # (T, G, N)
    else:
        nb, Dm, Lq = u.shape
        T = nb * Lq
        qsl = torch.arange(nb + 1, dtype=torch.int64) * Lq
        Bv = B.unsqueeze(1) if B.dim() == 3 else B
        Cv = C.unsqueeze(1) if C.dim() == 3 else C
        uT = u.transpose(1, 2).reshape(T, Dm)
        dT = delta.transpose(1, 2).reshape(T, Dm)
        zT = z.transpose(1, 2).reshape(T, Dm) if z is not None else None
        BT = Bv.permute(0, 3, 1, 2).reshape(T, Bv.shape[1], Bv.shape[2])
        CT = Cv.permute(0, 3, 1, 2).reshape(T, Cv.shape[1], Cv.shape[2])
    states = ssm_states
    nseq = qsl.numel() - 1
    lens = qsl[1:] - qsl[:-1]
    if cache_indices is not None:
        slots = cache_indices.to(torch.int64).reshape(-1)
        valid = live_slots(slots, PAD_SLOT_ID, null_block_id)
    else:
        slots = torch.arange(nseq, dtype=torch.int64)
        valid = torch.ones(nseq, dtype=torch.bool)
    run = valid & (lens > 0)
    ctype = compute_dtype(u, delta, ssm_states)
    out = z if z is not None else delta
    if not bool(run.any()):
        return out

    f32 = torch.float32
    if varlen and ctype == f32 and _native.available():
        # Fused scan in vLLM's (dim, T) layout, in place; pad/null sequences skipped in C.
        # u, delta and z go in as they are when they share fp32 or bf16 (the kernel reads and
        # writes that storage); other mixes run on fp32 copies (strides preserved), written
        # back after. B and C (small) always go as fp32.
        B, C = B.to(f32), C.to(f32)
        delta_h, z_h = delta, z
        if not _native.scan_storage_ok(u, delta, z):
            u, delta = u.to(f32), delta.to(f32)
            z = z.to(f32) if z is not None else None
        safe = torch.where(run, slots, 0)
        h = states[safe].to(f32)
        keep = (
            run & has_initial_state.reshape(-1).to(torch.bool)
            if has_initial_state is not None
            else None
        )
        # A slot without initial state is never read: where(), not a product (NaN * 0).
        h = torch.zeros_like(h) if keep is None else torch.where(keep[:, None, None], h, 0.0)
        h = h.contiguous()
        Bv3 = B.unsqueeze(0) if B.dim() == 2 else B
        Cv3 = C.unsqueeze(0) if C.dim() == 2 else C
        _native.scan_varlen(u, delta_bias, delta_softplus, A, Bv3, Cv3, D, z, delta, h, run, qsl)
        states.index_put_((slots[run],), h[run].to(states.dtype))
        if delta is not delta_h:
            delta_h.copy_(delta)
        if z is not None and z_h is not None and z is not z_h:
            z_h.copy_(z)
        return out

    # Packed inputs of the sequences that run.
    sq = torch.nonzero(run).reshape(-1)
    all_run = sq.numel() == nseq
    if all_run:
        tok = None
        qsl_r = qsl
    else:
        lens_r = lens[sq]
        qsl_r = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens_r, 0)])
        tok = torch.repeat_interleave(qsl[:-1][sq] - qsl_r[:-1], lens_r) + torch.arange(
            int(qsl_r[-1])
        )

    def take(t: Tensor) -> Tensor:
        return (t if tok is None else t[tok]).to(ctype)

    uc, dtc = take(uT), take(dT)
    if delta_bias is not None:
        dtc = dtc + delta_bias.reshape(-1).to(ctype)
    if delta_softplus:
        dtc = F.softplus(dtc)
    Ac = A.to(ctype)
    Bc, Cc = take(BT), take(CT)
    slots_r = slots[sq]
    if has_initial_state is not None:
        use = has_initial_state.reshape(-1)[sq].to(torch.bool)
        h0 = torch.where(use[:, None, None], states[slots_r].to(ctype), 0.0)
    else:
        h0 = torch.zeros((sq.numel(), *states.shape[1:]), dtype=ctype)
    y: Tensor | None = None
    if _native.available() and ctype == torch.float32:
        y, h = _native.selective_scan(uc, dtc, Ac, Bc, Cc, h0, qsl_r)
    if y is None:
        y, h = _scan_torch(uc, dtc, Ac, Bc, Cc, h0, qsl_r)
    if D is not None:
        y.addcmul_(uc, D.reshape(-1).to(ctype))
    rows = tok if tok is not None else torch.arange(T)
    if zT is not None:
        # As vLLM's kernel: delta receives the ungated output, z the gated one.
        yz = y * F.silu(take(zT))
        _write_tokens(delta, rows, y, varlen, all_rows=tok is None)
        y = yz
    # Write states, then the output (u/delta/z were fully read above).
    states.index_put_((slots_r,), h.to(states.dtype))
    _write_tokens(out, rows, y, varlen, all_rows=tok is None)
    return out
