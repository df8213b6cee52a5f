"""Triton kernels of ``fused_recurrent_gated_delta_rule`` (launched by :mod:`.recurrent`).

Shapes: ``q, k (B, T, H, K)``, ``v (B, T, HV, V)``, ``g (B, T, HV)``, ``beta`` none,
``(B, T, HV)`` or ``(B, T, HV, V)``; states ``(slots, HV, V, K)`` with any strides; ``o`` a new
contiguous ``(B, T, HV, V)``; per-token states (``inplace_final_state=False``) a new contiguous
``(B * T, HV, V, K)``. Sequence ``n`` owns tokens ``[cu[n], cu[n+1])`` of row 0 with
``cu_seqlens``, else the ``T`` tokens of row ``n``.

- :func:`_gdn_recurrent_kernel`, grid ``(N (+1 with cu_seqlens), HV, cdiv(V, BLOCK_V))``: one
  program per sequence, value head and block of ``BLOCK_V`` value rows, holding the whole
  ``(BLOCK_V, K)`` state tile in registers. Row ``v`` of the state only ever meets row ``v`` of
  ``v``/``beta``/``o``, so a row tile is exact, and each token runs in the spec's order::

      S <- exp(g) * S;   d = beta * (v - S k);   S <- S + d k^T;   o = S (scale * q)

  which keeps the spec's NaN/inf results (``0 * inf`` lands where it lands in the spec), and is
  one read and one write of each state byte. The extra program ``N`` (with ``cu_seqlens``)
  zeroes the output rows of the padded tail past ``cu[N]``; skipped sequences zero theirs.
- :func:`_gdn_snapshot_kernel`, grid ``(N,)``, only with 2-D ``ssm_state_indices`` written in
  place: flags each sequence whose *source* slot another running sequence *writes*
  (``idx[m, t] == src[n]``) and copies that slot into the sequence's row of a snapshot, which
  the update kernel then reads instead, so every state read sees the values from before the
  call whatever order the programs run in (the spec's reads-before-writes rule).
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba_backends.reference.gdn import L2NORM_EPS as _SPEC_EPS

#: eps inside the square root of the in-kernel l2 norm (the spec's, as vLLM/fla and HF use).
L2NORM_EPS: tl.constexpr = tl.constexpr(_SPEC_EPS)


@triton.jit
def _sequence(
    r, N, T, cu_ptr, idx_ptr, acc_ptr, num_slots, stride_idx_n, stride_idx_c,
    HAS_IDX: tl.constexpr, SPEC: tl.constexpr, VARLEN: tl.constexpr,
):  # fmt: skip
    """Sequence ``r`` (int64, may be a block): (batch row, first token, token count, source
    slot, runs). ``r == N`` with ``cu_seqlens`` is the padded tail ``[cu[N], T)``, which never
    runs. With indices a sequence runs when its source slot is real (``0 < slot < slots``);
    its source is column ``max(num_accepted_tokens - 1, 0)`` (``SPEC``) or 0 of its row."""
    in_r = r < N
    if VARLEN:
        start = tl.load(cu_ptr + r, mask=r <= N, other=0).to(tl.int64)
        end = tl.load(cu_ptr + r + 1, mask=in_r, other=0).to(tl.int64)
        end = tl.where(in_r, end, T)
        b = r * 0
    else:
        start = r * 0
        end = tl.where(in_r, T, 0).to(tl.int64)
        b = r
    n = end - start
    if HAS_IDX:
        col = r * 0
        if SPEC:
            col = tl.load(acc_ptr + r, mask=in_r, other=1).to(tl.int64) - 1
            col = tl.maximum(col, 0)
        slot = tl.load(idx_ptr + r * stride_idx_n + col * stride_idx_c, mask=in_r, other=-1)
        slot = slot.to(tl.int64)
        run = in_r & (n > 0) & (slot > 0) & (slot < num_slots)
    else:
        slot = r
        run = in_r & (n > 0)
    return b, start, n, slot, run


@triton.jit
def _l2norm(x):
    """``x / sqrt(sum(x * x) + eps)`` (the spec's form, so NaN/inf propagate as there)."""
    return x / tl.sqrt(tl.sum(x * x, axis=0) + L2NORM_EPS)


@triton.jit
def _gdn_recurrent_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, o_ptr, s_ptr, out_ptr,
    idx_ptr, acc_ptr, cu_ptr, snap_ptr, flag_ptr,
    N, T, HV, K, V, num_slots, group, scale,
    stride_q_b, stride_q_t, stride_q_h, stride_q_k,
    stride_k_b, stride_k_t, stride_k_h, stride_k_k,
    stride_v_b, stride_v_t, stride_v_h, stride_v_v,
    stride_g_b, stride_g_t, stride_g_h,
    stride_beta_b, stride_beta_t, stride_beta_h, stride_beta_v,
    stride_s_slot, stride_s_h, stride_s_v, stride_s_k,
    stride_idx_n, stride_idx_c,
    HAS_INIT: tl.constexpr, HAS_IDX: tl.constexpr, IDX_2D: tl.constexpr, SPEC: tl.constexpr,
    VARLEN: tl.constexpr, PER_TOKEN: tl.constexpr, SNAP: tl.constexpr, L2NORM: tl.constexpr,
    BETA: tl.constexpr, EVEN_K: tl.constexpr, OFF64: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Sequence ``pid0``, value head ``pid1``, value rows ``pid2 * BLOCK_V + [0, BLOCK_V)``.

    ``BETA``: 0 none (ones), 1 one per head (``(B, T, HV)``), 2 one per value row
    (``(B, T, HV, V)``). ``PER_TOKEN``: the state after every token goes to row ``b * T + t``
    of ``out_ptr`` (contiguous), and the pool is only read. Otherwise the pool is written in
    place: with 2-D indices after every token at ``idx[n, i]`` (if real), else once at the
    source slot. ``SNAP``: flagged sequences read their source from row ``n`` of ``snap_ptr``
    (contiguous ``(HV, V, K)`` rows). ``EVEN_K``: ``K == BLOCK_K`` (no padded columns).
    ``OFF64``: the offsets of the tile's elements from its (int64) row, head and slot base
    need int64 (the launcher decides from the strides); int32 otherwise, which halves the
    registers of the per-element and per-row offsets (they spill SGPRs on AMD at odd strides).
    """
    r = tl.program_id(0).to(tl.int64)
    hv = tl.program_id(1).to(tl.int64)
    vv = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    kk = tl.arange(0, BLOCK_K)
    if OFF64:
        vv = vv.to(tl.int64)
        kk = kk.to(tl.int64)
    v_ok = vv < V
    if EVEN_K:  # a constant mask along K lets loads and stores vectorise
        k_ok = kk < BLOCK_K
    else:
        k_ok = kk < K
    b, start, n_tok, src, run = _sequence(
        r, N, T, cu_ptr, idx_ptr, acc_ptr, num_slots, stride_idx_n, stride_idx_c,
        HAS_IDX, SPEC, VARLEN,
    )  # fmt: skip
    h = hv // group
    tile_ok = v_ok[:, None] & k_ok[None, :]
    m = tl.where(run, tile_ok, False)  # (the interpreter cannot '&' a scalar and a block)
    tile = vv[:, None] * stride_s_v + kk[None, :] * stride_s_k  # within (slot, head)
    s_head = s_ptr + hv * stride_s_h
    if HAS_INIT:
        if SNAP:
            snapped = tl.load(flag_ptr + r, mask=run, other=0) != 0
            from_pool = tl.where(snapped, False, m)
            from_snap = tl.where(snapped, m, False)
            S = tl.load(s_head + src * stride_s_slot + tile, mask=from_pool, other=0.0)
            S = S.to(tl.float32)
            snap_tile = snap_ptr + (r * HV + hv) * (V * K) + vv[:, None] * K + kk[None, :]
            S_snap = tl.load(snap_tile, mask=from_snap, other=0.0).to(tl.float32)
            S = tl.where(from_snap, S_snap, S)
        else:
            S = tl.load(s_head + src * stride_s_slot + tile, mask=m, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BLOCK_V, BLOCK_K], dtype=tl.float32)

    qk_ok = tl.where(run, k_ok, False)
    row_ok = tl.where(run, v_ok, False)
    # the sequence's first token (int64 scalars); token i is i * stride further (OFF64 says
    # whether i * stride needs int64)
    q_row = q_ptr + b * stride_q_b + start * stride_q_t + h * stride_q_h + kk * stride_q_k
    k_row = k_ptr + b * stride_k_b + start * stride_k_t + h * stride_k_h + kk * stride_k_k
    v_row = v_ptr + b * stride_v_b + start * stride_v_t + hv * stride_v_h + vv * stride_v_v
    g_at = g_ptr + b * stride_g_b + start * stride_g_t + hv * stride_g_h
    beta_at = beta_ptr + b * stride_beta_b + start * stride_beta_t + hv * stride_beta_h
    o_row = o_ptr + ((b * T + start) * HV + hv) * V + vv
    idx_row = idx_ptr + r * stride_idx_n
    tok0 = b * T + start
    for i0 in range(n_tok):
        if OFF64:
            i = i0 + start * 0  # (int64)
        else:
            i = i0
        q = tl.load(q_row + i * stride_q_t, mask=qk_ok, other=0.0).to(tl.float32)
        k = tl.load(k_row + i * stride_k_t, mask=qk_ok, other=0.0).to(tl.float32)
        if L2NORM:
            q = _l2norm(q)
            k = _l2norm(k)
        q = q * scale
        v = tl.load(v_row + i * stride_v_t, mask=row_ok, other=0.0).to(tl.float32)
        g = tl.load(g_at + i * stride_g_t, mask=run, other=0.0).to(tl.float32)
        # (an infinite decay would make the padded columns NaN here, but the spec's whole row
        # is NaN then too: inf * S, then inf - inf or inf * 0 in the update)
        S = S * tl.exp(g)
        d = v - tl.sum(S * k[None, :], axis=1)
        if BETA == 1:
            d = tl.load(beta_at + i * stride_beta_t, mask=run, other=0.0).to(tl.float32) * d
        elif BETA == 2:
            beta_row = beta_at + i * stride_beta_t + vv * stride_beta_v
            d = tl.load(beta_row, mask=row_ok, other=0.0).to(tl.float32) * d
        S = S + d[:, None] * k[None, :]
        if not EVEN_K:  # padded columns stay 0 (an infinite d times their 0 would be NaN)
            S = tl.where(k_ok[None, :], S, 0.0)
        o = tl.where(run, tl.sum(S * q[None, :], axis=1), 0.0)
        tl.store(o_row + i * (HV * V), o.to(o_ptr.dtype.element_ty), mask=v_ok)
        if PER_TOKEN:
            at = out_ptr + ((tok0 + i) * HV + hv) * (V * K) + vv[:, None] * K + kk[None, :]
            tl.store(at, S.to(out_ptr.dtype.element_ty), mask=m)
        elif IDX_2D:
            dst = tl.load(idx_row + i * stride_idx_c, mask=run, other=-1)
            dst = dst.to(tl.int64)
            w = tl.where((dst > 0) & (dst < num_slots), m, False)
            tl.store(s_head + dst * stride_s_slot + tile, S.to(s_ptr.dtype.element_ty), mask=w)
    if not PER_TOKEN and not IDX_2D:
        tl.store(s_head + src * stride_s_slot + tile, S.to(s_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gdn_snapshot_kernel(
    s_ptr, idx_ptr, acc_ptr, cu_ptr, snap_ptr, flag_ptr,
    N, T, HV, K, V, num_slots, cols,
    stride_s_slot, stride_s_h, stride_s_v, stride_s_k, stride_idx_n, stride_idx_c,
    SPEC: tl.constexpr, VARLEN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Sequence ``pid0``: does another running sequence write its source slot (``idx[m, t]``
    for its tokens ``t``)? If so, flag it and copy the slot, bit-exact in the state dtype,
    into row ``pid0`` of the snapshot ``(N, HV * V * K)``."""
    r = tl.program_id(0).to(tl.int64)
    _b, _s, _n, src, run = _sequence(
        r, N, T, cu_ptr, idx_ptr, acc_ptr, num_slots, stride_idx_n, stride_idx_c,
        True, SPEC, VARLEN,
    )  # fmt: skip
    hits = tl.zeros([BLOCK_R], dtype=tl.int32)
    for m0 in range(0, N, BLOCK_R):
        m = m0 + tl.arange(0, BLOCK_R).to(tl.int64)
        _bm, _sm, n_m, _src_m, run_m = _sequence(
            m, N, T, cu_ptr, idx_ptr, acc_ptr, num_slots, stride_idx_n, stride_idx_c,
            True, SPEC, VARLEN,
        )  # fmt: skip
        other = run_m & (m != r)
        for c in range(cols):
            live = other & (c < n_m)
            w = tl.load(idx_ptr + m * stride_idx_n + c * stride_idx_c, mask=live, other=-1)
            hits += (live & (w.to(tl.int64) == src)).to(tl.int32)
    contested = run & (tl.sum(hits, axis=0) > 0)
    tl.store(flag_ptr + r, contested.to(tl.int32))
    total = HV * V * K
    chunks = tl.where(contested, tl.cdiv(total, BLOCK_E), 0)
    for c in range(chunks):
        e = c * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
        ok = e < total
        kk = e % K
        hv_v = e // K
        off = (hv_v // V) * stride_s_h + (hv_v % V) * stride_s_v + kk * stride_s_k
        x = tl.load(s_ptr + src * stride_s_slot + off, mask=ok, other=0.0)
        tl.store(snap_ptr + r * total + e, x, mask=ok)
