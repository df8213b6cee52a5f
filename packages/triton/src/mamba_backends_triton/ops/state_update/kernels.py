"""Triton kernels of ``selective_state_update`` (launched by :mod:`.update`).

Everything is in the heads form: ``state (slots, H, P, N)``, ``x/dt/z/out (T, H, P)``,
``A (H, P, N)``, ``B/C (T, G, N)``, ``D/dt_bias (H, P)``; the launcher maps the Mamba1 form onto
it with ``H = 1`` (zero head strides). A request ``r`` owns tokens ``[start, start + n)``: one
token ``r`` without ``cu_seqlens``, ``[cu[r], cu[r+1])`` with it.

- :func:`_ssu_kernel`, grid ``(R, H, cdiv(P, BLOCK_P))``: one program per request, head and
  block of ``BLOCK_P`` channels, with the whole ``(BLOCK_P, N)`` state tile in registers. It
  loads the tile once, runs the request's tokens over it, and stores it once (or once per token
  with ``num_accepted_tokens``): one read and one write of every state byte it owns. The tile is
  read before any of the program's writes; programs own disjoint tiles of their slots.
- :func:`_ssu_snapshot_kernel`, grid ``(R,)``, only when destination slots may differ from the
  sources: marks each request whose *source* slot another active request *writes* (a chain or
  a swap across requests: ``dst[r] == src[r']``), and copies that source slot into the
  request's row of a snapshot buffer. :func:`_ssu_kernel` then reads those requests from the
  snapshot, so every state read sees the values from before the call whatever order the
  programs run in, without a grid-wide barrier.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """``log(1 + exp(x))`` in float32, accurate for large ``|x|``, NaN-propagating."""
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    # log1p(e) without a log1p: log(u) * e / (u - 1) corrects the rounding of u = 1 + e.
    log1p = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _valid_slot(slot, num_slots, null_block_id):
    """A real slot: not the null block, in range (the pad slot, -1, is out of range)."""
    return (slot != null_block_id) & (slot >= 0) & (slot < num_slots)


@triton.jit
def _request(
    r, R, cu_ptr, src_ptr, acc_ptr, num_slots, null_block_id, stride_src_r, stride_src_k,
    HAS_IDX: tl.constexpr, SPEC: tl.constexpr, VARLEN: tl.constexpr,
):  # fmt: skip
    """Request ``r`` (int64, may be a block): (first token, token count, source slot, runs).

    A request runs when it has tokens and (with indices) a real source slot. With
    ``num_accepted_tokens`` its source is column ``max(accepted - 1, 0)`` of its index row.
    """
    in_r = r < R
    if VARLEN:
        start = tl.load(cu_ptr + r, mask=in_r, other=0).to(tl.int64)
        n = tl.load(cu_ptr + r + 1, mask=in_r, other=0).to(tl.int64) - start
    else:
        start = r
        n = tl.where(in_r, 1, 0).to(tl.int64)
    if HAS_IDX:
        if SPEC:
            col = tl.load(acc_ptr + r, mask=in_r, other=1).to(tl.int64) - 1
            col = tl.maximum(col, 0)
        else:
            col = r * 0
        slot = tl.load(src_ptr + r * stride_src_r + col * stride_src_k, mask=in_r, other=-1)
        slot = slot.to(tl.int64)
        run = in_r & (n > 0) & _valid_slot(slot, num_slots, null_block_id)
    else:
        slot = r
        run = in_r & (n > 0)
    return start, n, slot, run


@triton.jit
def _ssu_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, out_ptr,
    src_ptr, dst_ptr, acc_ptr, cu_ptr, snap_ptr, flag_ptr,
    P, N, heads_per_group, num_slots, null_block_id,
    stride_s_slot, stride_s_h, stride_s_p, stride_s_n,
    stride_x_t, stride_x_h, stride_x_p, stride_dt_t, stride_dt_h, stride_dt_p,
    stride_A_h, stride_A_p, stride_A_n,
    stride_B_t, stride_B_g, stride_B_n, stride_C_t, stride_C_g, stride_C_n,
    stride_D_h, stride_D_p, stride_bias_h, stride_bias_p,
    stride_z_t, stride_z_h, stride_z_p, stride_o_t, stride_o_h, stride_o_p,
    stride_src_r, stride_src_k, stride_dst_r, stride_dst_k,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_IDX: tl.constexpr, SPEC: tl.constexpr, VARLEN: tl.constexpr, SNAP: tl.constexpr,
    A_ROW: tl.constexpr, EVEN_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Request ``pid0``, head ``pid1``, channels ``pid2 * BLOCK_P + [0, BLOCK_P)``.

    ``A_ROW``: A is constant along N (vLLM's tied per-head A has strides (1, 0, 0)), so
    ``exp(A * dt)`` is one value per channel instead of a tile. ``SNAP``: requests flagged in
    ``flag_ptr`` read their source from row ``r`` of ``snap_ptr`` (contiguous ``(H, P, N)``).
    The grid is exactly ``(R, H, ...)``: every program's request and head exist.
    """
    r = tl.program_id(0).to(tl.int64)
    R = tl.num_programs(0)
    h = tl.program_id(1).to(tl.int64)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    nn = tl.arange(0, BLOCK_N)
    p_ok = p < P
    if EVEN_N:  # N == BLOCK_N: a constant mask along N lets loads and stores vectorise
        n_ok = nn < BLOCK_N
    else:
        n_ok = nn < N
    p64 = p.to(tl.int64)
    n64 = nn.to(tl.int64)
    start, n_tok, src, run = _request(
        r, R, cu_ptr, src_ptr, acc_ptr, num_slots, null_block_id, stride_src_r, stride_src_k,
        HAS_IDX, SPEC, VARLEN,
    )  # fmt: skip
    n_tok = tl.where(run, n_tok, 0)
    g = h // heads_per_group
    tile_ok = p_ok[:, None] & n_ok[None, :]
    m = tl.where(run, tile_ok, False)  # (the interpreter cannot '&' a scalar and a block)
    tile = h * stride_s_h + p64[:, None] * stride_s_p + n64[None, :] * stride_s_n
    if SNAP:
        snapped = tl.load(flag_ptr + r, mask=run, other=0) != 0
        from_pool = tl.where(snapped, False, m)
        from_snap = tl.where(snapped, m, False)
        s = tl.load(state_ptr + src * stride_s_slot + tile, mask=from_pool, other=0.0)
        s = s.to(tl.float32)
        snap_tile = (h * P + p64[:, None]) * N + n64[None, :]
        snap_row = snap_ptr + r * (tl.num_programs(1) * P * N)
        s_snap = tl.load(snap_row + snap_tile, mask=from_snap, other=0.0)
        s = tl.where(from_snap, s_snap.to(tl.float32), s)
    else:
        s = tl.load(state_ptr + src * stride_s_slot + tile, mask=m, other=0.0).to(tl.float32)

    if A_ROW:
        A = tl.load(A_ptr + h * stride_A_h + p64 * stride_A_p, mask=p_ok, other=0.0)
    else:
        A_tile = A_ptr + h * stride_A_h + p64[:, None] * stride_A_p + n64[None, :] * stride_A_n
        A = tl.load(A_tile, mask=tile_ok, other=0.0)
    A = A.to(tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + h * stride_D_h + p64 * stride_D_p, mask=p_ok, other=0.0)
        D = D.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h * stride_bias_h + p64 * stride_bias_p, mask=p_ok, other=0.0)
        bias = bias.to(tl.float32)

    row_ok = tl.where(run, p_ok, False)
    x_row = x_ptr + h * stride_x_h + p64 * stride_x_p
    dt_row = dt_ptr + h * stride_dt_h + p64 * stride_dt_p
    z_row = z_ptr + h * stride_z_h + p64 * stride_z_p
    o_row = out_ptr + h * stride_o_h + p64 * stride_o_p
    B_row = B_ptr + g * stride_B_g + n64 * stride_B_n
    C_row = C_ptr + g * stride_C_g + n64 * stride_C_n
    bc_ok = tl.where(run, n_ok, False)
    for i in range(n_tok):
        t = start + i
        x = tl.load(x_row + t * stride_x_t, mask=row_ok, other=0.0).to(tl.float32)
        dt = tl.load(dt_row + t * stride_dt_t, mask=row_ok, other=0.0).to(tl.float32)
        Bt = tl.load(B_row + t * stride_B_t, mask=bc_ok, other=0.0).to(tl.float32)
        Ct = tl.load(C_row + t * stride_C_t, mask=bc_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = softplus(dt)
        if A_ROW:
            dA = tl.exp(A * dt)[:, None]
        else:
            dA = tl.exp(A * dt[:, None])
        s = s * dA + (dt * x)[:, None] * Bt[None, :]
        y = tl.sum(s * Ct[None, :], axis=1)
        if HAS_D:
            y += D * x
        if HAS_Z:
            zt = tl.load(z_row + t * stride_z_t, mask=row_ok, other=0.0).to(tl.float32)
            y = y * (zt * tl.sigmoid(zt))
        tl.store(o_row + t * stride_o_t, y.to(out_ptr.dtype.element_ty), mask=row_ok)
        if SPEC:
            dst = tl.load(dst_ptr + r * stride_dst_r + i * stride_dst_k, mask=run, other=-1)
            dst = dst.to(tl.int64)
            w = tl.where(_valid_slot(dst, num_slots, null_block_id), m, False)
            tl.store(
                state_ptr + dst * stride_s_slot + tile, s.to(state_ptr.dtype.element_ty), mask=w
            )
    if not SPEC:
        if HAS_IDX:
            dst = tl.load(dst_ptr + r * stride_dst_r, mask=run, other=-1).to(tl.int64)
            w = tl.where(_valid_slot(dst, num_slots, null_block_id), m, False)
        else:
            dst = src
            w = m
        tl.store(state_ptr + dst * stride_s_slot + tile, s.to(state_ptr.dtype.element_ty), mask=w)


@triton.jit
def _ssu_snapshot_kernel(
    state_ptr, src_ptr, dst_ptr, acc_ptr, cu_ptr, snap_ptr, flag_ptr,
    R, H, P, N, num_slots, dst_cols, null_block_id,
    stride_s_slot, stride_s_h, stride_s_p, stride_s_n,
    stride_src_r, stride_src_k, stride_dst_r, stride_dst_k, stride_snap_r,
    SPEC: tl.constexpr, VARLEN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Request ``pid0``: is its source slot written by another active request? If so, copy the
    slot (bit-exact, in the state dtype) into row ``r`` of the snapshot ``(R, H*P*N)``.

    The slots a request writes: ``dst[q, 0]`` (one per request), or with
    ``num_accepted_tokens`` ``dst[q, k]`` for each of its tokens ``k``.
    """
    r = tl.program_id(0).to(tl.int64)
    r_start, r_n, src, run = _request(
        r, R, cu_ptr, src_ptr, acc_ptr, num_slots, null_block_id, stride_src_r, stride_src_k,
        True, SPEC, VARLEN,
    )  # fmt: skip
    hits = tl.zeros([BLOCK_R], dtype=tl.int32)
    for q0 in range(0, R, BLOCK_R):
        q = q0 + tl.arange(0, BLOCK_R).to(tl.int64)
        q_start, n_q, q_src, run_q = _request(
            q, R, cu_ptr, src_ptr, acc_ptr, num_slots, null_block_id, stride_src_r,
            stride_src_k, True, SPEC, VARLEN,
        )  # fmt: skip
        other = run_q & (q != r)
        if SPEC:
            for k in range(dst_cols):
                live = other & (k < n_q)
                w = tl.load(dst_ptr + q * stride_dst_r + k * stride_dst_k, mask=live, other=-1)
                hits += (live & (w.to(tl.int64) == src)).to(tl.int32)
        else:
            w = tl.load(dst_ptr + q * stride_dst_r, mask=other, other=-1)
            hits += (other & (w.to(tl.int64) == src)).to(tl.int32)
    contested = run & (tl.sum(hits, axis=0) > 0)
    tl.store(flag_ptr + r, contested.to(tl.int32))
    total = H * P * N
    chunks = tl.where(contested, tl.cdiv(total, BLOCK_E), 0)
    for c in range(chunks):
        e = c * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
        ok = e < total
        n_e = e % N
        hp = e // N
        off = (hp // P) * stride_s_h + (hp % P) * stride_s_p + n_e * stride_s_n
        v = tl.load(state_ptr + src * stride_s_slot + off, mask=ok, other=0.0)
        tl.store(snap_ptr + r * stride_snap_r + e, v, mask=ok)
