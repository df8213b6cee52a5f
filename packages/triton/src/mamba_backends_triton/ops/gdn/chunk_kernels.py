"""Kernel of the chunked gated delta rule prefill (launcher: :mod:`.chunk`).

:func:`_gdn_chunk_kernel`, grid ``(N + VARLEN, HV, cdiv(V, BLOCK_V))``: one program per
sequence, value head and block of ``BLOCK_V`` value rows scans the sequence's chunks of
``BLOCK_T`` tokens in order, holding the state block ``h = S[v rows, :]^T`` (``[K, BLOCK_V]``,
float32) in registers from the first chunk to the last, so no state leaves the program between
chunks. Value rows of the state never meet each other in the recurrence (``S @ k`` and
``outer(d, k)`` are row by row), so a block of rows is exact.

Within a chunk of ``L`` tokens with log decays ``g`` (``G`` their running sum from the chunk's
start) and decay ratios ``D[i, j] = exp(g[j+1] + ... + g[i])`` for ``i >= j``::

    A     = strict_lower(beta[:, None] * (k @ k^T) * D)   # delta-rule interactions
    d     = (I + A)^-1 @ (beta[:, None] * (v - exp(G)[:, None] * (k @ h)))
    o     = exp(G)[:, None] * (q @ h) + lower((q @ k^T) * D) @ d
    h    <- exp(G[L-1]) * h + (k * D[L-1, :][:, None])^T @ d

``d[t]`` is the spec's delta ``beta_t * (v_t - S k_t)`` of token ``t``. ``D`` is a segment sum
of the gates, computed as a masked running sum down each column (never as a difference of two
running sums): at cumulative gates of -1e4 a difference of float32 sums loses every digit of a
small gate after a large one, and a gate of ``-inf`` (a full reset) would give ``inf - inf``.
``(I + A)^-1`` is found by forward substitution, row by row.

A chunk whose q, k, v (the program's rows), beta or state holds a NaN or an infinity, or whose
gates hold NaN or ``+inf``, takes :func:`_token_steps` instead: the spec's recurrence token by
token, in its order of operations, so that NaN and inf land where they land in the spec (a
chunked product would turn an infinite token into NaN for every earlier token of its chunk:
``0 * inf``). Padded rows of K stay 0 there.

Offsets of tokens, heads, batch rows and sequences are int64. Every load is masked.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: eps inside the square root of the in-kernel q/k l2 norm (the spec's).
L2_EPS = tl.constexpr(1e-6)


#: exp(a) is exactly 0 in float64 below this (the spec decays in float64, token by token).
EXP_F64_ZERO = tl.constexpr(-745.1332191019412)


@triton.jit
def _decay(x, a):
    """x * exp(a) as the spec's float64 decay treats infinities: an infinite x stays infinite
    unless exp(a) is 0 in float64 too (inf * 0 = NaN), even where exp(a) underflows float32."""
    scaled = x * tl.exp(a)
    # (nested tl.where: the interpreter cannot combine a scalar and a block mask)
    return tl.where(a <= EXP_F64_ZERO, scaled, tl.where(tl.abs(x) == float("inf"), x, scaled))


@triton.jit
def _bad(v):
    """How many elements of the 2-D block v are NaN or infinite."""
    return tl.sum(tl.sum(((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32), 1), 0)


@triton.jit
def _mm(a, b, F32_DOT: tl.constexpr, dot_ty: tl.constexpr):
    """a @ b in float32: from ``dot_ty`` operands, or (``F32_DOT`` an ``input_precision``)
    from float32 operands."""
    if F32_DOT is not None:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=F32_DOT)
    return tl.dot(a.to(dot_ty), b.to(dot_ty))


@triton.jit
def _l2(x, axis: tl.constexpr):
    """x / sqrt(sum(x * x) + eps) along ``axis`` (the spec's formula)."""
    return x / tl.sqrt(tl.sum(x * x, axis, keep_dims=True) + L2_EPS)


@triton.jit
def _token_steps(
    h, q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, o_ptr, t0, t1,
    kk, vv, k_ok, v_ok, scale,
    stride_q_t, stride_k_t, stride_v_t, stride_g_t, stride_beta_t, stride_o_t,
    stride_q_k, stride_k_k, stride_v_v, stride_o_v,
    L2NORM: tl.constexpr,
):  # fmt: skip
    """The spec's recurrence over tokens ``[t0, t1)`` (int64; pointers at the row, head and value
    block; ``h: [BLOCK_K, BLOCK_V]``); writes each token's output and returns the state."""
    for t in range(t0, t1):
        q = tl.load(q_ptr + t * stride_q_t + kk * stride_q_k, mask=k_ok, other=0.0)
        k = tl.load(k_ptr + t * stride_k_t + kk * stride_k_k, mask=k_ok, other=0.0)
        v = tl.load(v_ptr + t * stride_v_t + vv * stride_v_v, mask=v_ok, other=0.0)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        if L2NORM:
            q = _l2(q, 0)
            k = _l2(k, 0)
        q = q * scale
        g = tl.load(g_ptr + t * stride_g_t).to(tl.float32)
        b = tl.load(beta_ptr + t * stride_beta_t).to(tl.float32)
        h = _decay(h, g)
        d = b * (v.to(tl.float32) - tl.sum(k[:, None] * h, 0))
        h = h + k[:, None] * d[None, :]
        h = tl.where(k_ok[:, None], h, 0.0)  # padded rows stay 0 (0 * inf would be NaN)
        o = tl.sum(q[:, None] * h, 0)
        tl.store(o_ptr + t * stride_o_t + vv * stride_o_v, o.to(o_ptr.dtype.element_ty),
                 mask=v_ok)  # fmt: skip
    return h


@triton.jit
def _scan_chunks(
    q_base, k_base, v_base, g_base, b_base, o_base, h0_ptr, ht_ptr, n, hv, bos, eos,
    HV, K, V, scale, kk, vv, k_ok, v_ok,
    stride_q_t, stride_q_k, stride_k_t, stride_k_k, stride_v_t, stride_v_v,
    stride_g_t, stride_beta_t, stride_h0_n, stride_h0_h, stride_h0_v, stride_h0_k,
    stride_o_t, stride_o_v, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr,
    L2NORM: tl.constexpr, F32_DOT: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    """One sequence's chunks for one value head and block of value rows (see the module
    docstring); the ``*_base`` pointers are at the sequence's batch row and heads."""
    rr = tl.arange(0, BLOCK_T)
    kv_ok = k_ok[:, None] & v_ok[None, :]
    h = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    if HAS_INIT:
        h0 = h0_ptr + n.to(tl.int64) * stride_h0_n + hv * stride_h0_h
        h = tl.load(h0 + kk[:, None] * stride_h0_k + vv[None, :] * stride_h0_v, mask=kv_ok,
                    other=0.0).to(tl.float32)  # fmt: skip
    dot_ty = q_base.dtype.element_ty
    lower = rr[:, None] >= rr[None, :]
    strict = rr[:, None] > rr[None, :]
    eye = (rr[:, None] == rr[None, :]).to(tl.float32)
    for t0 in range(bos, eos, BLOCK_T):
        tt = t0 + rr.to(tl.int64)
        t_ok = tt < eos
        tk = t_ok[:, None] & k_ok[None, :]
        tv = t_ok[:, None] & v_ok[None, :]
        q = tl.load(q_base + tt[:, None] * stride_q_t + kk[None, :] * stride_q_k, mask=tk,
                    other=0.0).to(tl.float32)  # fmt: skip
        k = tl.load(k_base + tt[:, None] * stride_k_t + kk[None, :] * stride_k_k, mask=tk,
                    other=0.0).to(tl.float32)  # fmt: skip
        v = tl.load(v_base + tt[:, None] * stride_v_t + vv[None, :] * stride_v_v, mask=tv,
                    other=0.0).to(tl.float32)  # fmt: skip
        g = tl.load(g_base + tt * stride_g_t, mask=t_ok, other=0.0).to(tl.float32)
        b = tl.load(b_base + tt * stride_beta_t, mask=t_ok, other=0.0)
        b = b.to(tl.float32)
        bad = _bad(q) + _bad(k) + _bad(v) + _bad(h) + _bad(b[:, None])
        bad += tl.sum(((g != g) | (g == float("inf"))).to(tl.int32), 0)
        if bad > 0:
            t1 = tl.minimum(t0 + BLOCK_T, eos)
            h = _token_steps(
                h, q_base, k_base, v_base, g_base, b_base, o_base, t0, t1,
                kk, vv, k_ok, v_ok, scale,
                stride_q_t, stride_k_t, stride_v_t, stride_g_t, stride_beta_t, stride_o_t,
                stride_q_k, stride_k_k, stride_v_v, stride_o_v, L2NORM,
            )  # fmt: skip
        else:
            if L2NORM:
                q = _l2(q, 1)
                k = _l2(k, 1)
            q = q * scale
            # segment sums: seg[i, j] = g[j+1] + ... + g[i] (i >= j), a running sum down
            # each column of the gates below the diagonal
            seg = tl.cumsum(tl.where(strict, g[:, None], 0.0), 0)
            D = tl.where(lower, tl.exp(seg), 0.0)
            eG = tl.exp(tl.cumsum(g, 0))
            last = tl.sum(tl.where(rr[:, None] == BLOCK_T - 1, D, 0.0), 0)  # D[L-1, :]
            A = tl.where(strict, b[:, None] * _mm(k, tl.trans(k), F32_DOT, dot_ty) * D, 0.0)
            # (I + A)^-1 by forward substitution (rows past the chunk's end stay unit rows)
            Ti = eye
            for i in range(1, tl.minimum(eos - t0, BLOCK_T)):
                a_i = tl.sum(tl.where(rr[:, None] == i, A, 0.0), 0)
                row_i = tl.sum(a_i[:, None] * Ti, 0)
                Ti = tl.where(rr[:, None] == i, Ti - row_i[None, :], Ti)
            r = b[:, None] * (v - eG[:, None] * _mm(k, h, F32_DOT, dot_ty))
            d = _mm(Ti, r, F32_DOT, dot_ty)
            Aqk = tl.where(lower, _mm(q, tl.trans(k), F32_DOT, dot_ty) * D, 0.0)
            o = eG[:, None] * _mm(q, h, F32_DOT, dot_ty) + _mm(Aqk, d, F32_DOT, dot_ty)
            tl.store(o_base + tt[:, None] * stride_o_t + vv[None, :] * stride_o_v,
                     o.to(o_base.dtype.element_ty), mask=tv)  # fmt: skip
            decay = tl.exp(tl.sum(g, 0))
            h = decay * h + _mm(tl.trans(k * last[:, None]), d, F32_DOT, dot_ty)
    if STORE_FINAL:
        ht = ht_ptr + (n.to(tl.int64) * HV + hv) * V * K
        tl.store(ht + kk[:, None] + vv[None, :] * K, h, mask=kv_ok)


@triton.jit
def _gdn_chunk_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, h0_ptr, o_ptr, ht_ptr, cu_ptr,
    N, T, HV, K, V, group, scale,
    stride_q_b, stride_q_t, stride_q_h, stride_q_k,
    stride_k_b, stride_k_t, stride_k_h, stride_k_k,
    stride_v_b, stride_v_t, stride_v_h, stride_v_v,
    stride_g_b, stride_g_t, stride_g_h,
    stride_beta_b, stride_beta_t, stride_beta_h,
    stride_h0_n, stride_h0_h, stride_h0_v, stride_h0_k,
    stride_o_b, stride_o_t, stride_o_h, stride_o_v,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr,
    L2NORM: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    """Sequence ``program_id(0)`` (``== N`` with VARLEN: zero the output rows past
    ``cu[N]``), value head ``program_id(1)``, value rows of block ``program_id(2)``.

    q, k [B, T, H, K]; v, o [B, T, HV, V]; g, beta [B, T, HV]; h0 [N, HV, V, K];
    ht [N, HV, V, K] float32, contiguous; cu [N + 1] (VARLEN: B == 1).
    """
    n = tl.program_id(0)
    hv = tl.program_id(1).to(tl.int64)
    hq = hv // group
    vv = tl.program_id(2).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    kk = tl.arange(0, BLOCK_K).to(tl.int64)
    rr = tl.arange(0, BLOCK_T)
    v_ok = vv < V
    k_ok = kk < K
    if VARLEN:
        row = tl.zeros((), dtype=tl.int64)
        bos = tl.load(cu_ptr + n).to(tl.int64)
        if n < N:
            eos = tl.load(cu_ptr + n + 1).to(tl.int64)
        else:
            eos = tl.zeros((), dtype=tl.int64) + T
    else:
        row = n.to(tl.int64)
        bos = tl.zeros((), dtype=tl.int64)
        eos = tl.zeros((), dtype=tl.int64) + T
    q_base = q_ptr + row * stride_q_b + hq * stride_q_h
    k_base = k_ptr + row * stride_k_b + hq * stride_k_h
    v_base = v_ptr + row * stride_v_b + hv * stride_v_h
    g_base = g_ptr + row * stride_g_b + hv * stride_g_h
    b_base = beta_ptr + row * stride_beta_b + hv * stride_beta_h
    o_base = o_ptr + row * stride_o_b + hv * stride_o_h
    if n >= N:  # (VARLEN) the padded tail past cu[N]: zeros, as in the spec
        zero = tl.zeros((BLOCK_T, BLOCK_V), dtype=o_ptr.dtype.element_ty)
        for t0 in range(bos, eos, BLOCK_T):
            tt = t0 + rr.to(tl.int64)
            m = (tt < eos)[:, None] & v_ok[None, :]
            tl.store(o_base + tt[:, None] * stride_o_t + vv[None, :] * stride_o_v, zero, mask=m)
    else:
        _scan_chunks(
            q_base, k_base, v_base, g_base, b_base, o_base, h0_ptr, ht_ptr, n, hv, bos, eos,
            HV, K, V, scale, kk, vv, k_ok, v_ok,
            stride_q_t, stride_q_k, stride_k_t, stride_k_k, stride_v_t, stride_v_v,
            stride_g_t, stride_beta_t, stride_h0_n, stride_h0_h, stride_h0_v, stride_h0_k,
            stride_o_t, stride_o_v, HAS_INIT, STORE_FINAL, L2NORM, F32_DOT, BLOCK_T,
            BLOCK_K, BLOCK_V,
        )  # fmt: skip
