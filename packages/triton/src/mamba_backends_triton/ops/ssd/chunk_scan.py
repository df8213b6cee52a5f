"""The fused Mamba2 SSD kernel: a varlen chunk scan, one program per (sequence, head, P block).

A program walks its sequence's chunks (``cu_chunk_seqlens``, from ``last_chunk_indices``) in
order, each as sub-blocks of ``BLOCK_L`` tokens, and carries the state ``s`` (BLOCK_P, N) in
float32 registers. For a sub-block of tokens ``i, j in [0, L)`` entering with state ``s``::

    dt_i  = clamp(softplus?(dt_i + dt_bias)),   a_i = A * dt_i,   c_i = sum_{k <= i} a_k
    y_i   = exp(c_i) * (C_i . s^T)                                   (the state it entered with)
          + sum_{j <= i} (C_i . B_j) * exp(c_i - c_j) * dt_j * x_j    (tokens of the sub-block)
    s     = exp(c_last) * s + sum_j exp(c_last - c_j) * dt_j * x_j^T B_j

the exact re-association of the spec's token recurrence. The three products are ``tl.dot`` s:
``C B^T`` (L, L), the masked decay matrix times ``x`` (L, P), ``C s^T`` (L, P) and the state
update ``(x w)^T B`` (P, N). The epilogue adds ``D x`` and gates with ``silu(z)``.

Numerics:

- the decay exponents are direct sums, never differences of cumulative sums (those lose the
  digits that matter when ``A dt`` reaches -1e4 per token): ``seg[i, j] = sum_{j<k<=i} a_k`` is
  a cumulative sum over a masked (L, L) matrix, ``c_i`` a sum over the masked rows of one; it
  is <= 0 for a negative ``A``, so nothing overflows, and the decay matrix is a ``where`` on
  the causal part;
- a sub-block with a NaN or infinite ``x``, ``B``, ``C`` or step size runs the spec's token
  recurrence instead (a loop over its tokens with the state in registers, each token's row
  taken bit for bit from the tiles already loaded): in a product form ``0 * inf`` would reach
  the rows before the bad token and the signs of infinities would mix in another order, so
  NaN/inf now reach exactly the outputs they reach in the spec;
- dot operands are the inputs' 16-bit dtype (the decay matrix, ``x w`` and the state are
  rounded to it, as vLLM's kernels do) with float32 accumulation. Float32 (or mixed-dtype)
  inputs keep float32 accuracy, never TF32: ``F32_DOT="ieee"`` (split-operand tensor-core
  modes, ``tf32x3``/``bf16x3``, spilled registers in the compile check at every tile size).

Offsets are int64 (token indices int32: T < 2**31); every load is masked on the tokens, and
on the channels and state columns unless ``EVEN_P`` (P % BLOCK_P == 0) or ``EVEN_N``
(N == BLOCK_N) says there is no padding there (tiles are padded to ``tl.dot`` s minimum of 16).

Registers (AMD): every boolean per element that is loop-invariant (a padding mask, the lane
masks of a scan) is hoisted out of the scan and holds a 64-bit scalar register pair on wave64
for all of it, next to the ~45 scalar arguments; hence the EVEN specialisations, the int32
token indices, ``c_i`` and ``dead`` as masked row reductions rather than scans, the non-finite
check as plain maxima and the recurrence reading the loaded tiles (no second set of loads).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: What the kernel does with the states (``STATE_MODE``).
FINAL_STATES = 0  # the state after each sequence, to row b of states (batch, H, P, N)
CHUNK_STATES = 1  # the state after every chunk, to row c of states (nchunks, H, P, N)
SCATTER_STATES = 2  # the final state of sequence b to slot idx[b] (pad/null skipped)


@triton.jit
def _softplus(v):
    """log(1 + exp(v)) in float32, as torch's (threshold 20), accurate for very negative v."""
    u = tl.exp(v)
    w = 1.0 + u
    # log1p(u) = log(w) * u / (w - 1): exact to rounding, also where 1 + u rounds to 1.
    lp = tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))
    return tl.where(v > 20.0, v, lp)


@triton.jit
def _dt(dt, bias, lo, hi, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
    """The step size: clamp(softplus?(dt + dt_bias), lo, hi), NaN kept (float32)."""
    dt = dt.to(tl.float32)
    if HAS_DT_BIAS:
        dt += bias
    if DT_SOFTPLUS:
        dt = _softplus(dt)
    return tl.clamp(dt, lo, hi, propagate_nan=tl.PropagateNan.ALL)


#: exp(a) is exactly 0 in float64 below this (the spec decays in float64, token by token).
EXP_F64_ZERO = tl.constexpr(-745.1332191019412)


@triton.jit
def _decay(v, e, dead):
    """v * exp(e) for e <= 0 the summed exponent of some tokens' decays, as the spec's token by
    token float64 decays treat infinities: an infinite v stays infinite unless ``dead`` (one of
    those tokens decays by exactly 0 in float64, inf * 0 = NaN), even where exp(e) underflows
    float32."""
    scaled = v * tl.exp(e)
    # (nested tl.where, not '&': the interpreter cannot combine a scalar and a block mask)
    return tl.where(dead, scaled, tl.where(tl.abs(v) == float("inf"), v, scaled))


@triton.jit
def _nonfinite(v):
    """1 where the block v is NaN or infinite, else 0 (int32, same shape)."""
    v = v.to(tl.float32)
    return ((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32)


@triton.jit
def _row(v, sel):
    """Row ``sel`` (a one-hot (L,) mask) of the float32 block v (L, K), as (K,), bit for bit
    (an integer sum of one non-zero word keeps -0.0 and NaN payloads)."""
    bits = tl.where(sel[:, None], v.to(tl.int32, bitcast=True), 0)
    return tl.sum(bits, 0).to(tl.float32, bitcast=True)


@triton.jit
def _mm(a, b, acc, F32_DOT: tl.constexpr, dot_ty: tl.constexpr):
    """acc + a @ b (acc None: zeros) in float32: from ``dot_ty`` operands, or (``F32_DOT`` set,
    an ``input_precision``) from float32 operands at float32 accuracy."""
    if F32_DOT is not None:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=F32_DOT)
    return tl.dot(a.to(dot_ty), b.to(dot_ty), acc)


@triton.jit
def _emit(y, x, D_p, z_h, o_h, tt, stride_z_t, stride_o_t, tp_ok, HAS_D: tl.constexpr,
          HAS_Z: tl.constexpr):  # fmt: skip
    """out rows tt = (y + D x) * silu(z) (the optional terms where present), y and x (L, P)."""
    if HAS_D:
        y += x * D_p[None, :]
    if HAS_Z:
        zt = tl.load(z_h + tt * stride_z_t, mask=tp_ok, other=0.0).to(tl.float32)
        y = y * (zt * tl.sigmoid(zt))
    tl.store(o_h + tt * stride_o_t, y.to(o_h.dtype.element_ty), mask=tp_ok)


@triton.jit
def _ssd_varlen_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, init_ptr,
    cu_seqlens_ptr, cu_chunk_ptr, last_chunk_ptr, slot_ptr, out_ptr, states_ptr,
    H, P, N, heads_per_group, pad_slot_id, null_block_id, dt_lo, dt_hi,
    stride_x_t, stride_x_h, stride_x_p, stride_dt_t, stride_dt_h,
    stride_B_t, stride_B_g, stride_B_n, stride_C_t, stride_C_g, stride_C_n,
    stride_D_h, stride_D_p, stride_z_t, stride_z_h, stride_z_p,
    stride_o_t, stride_o_h, stride_o_p,
    stride_i_b, stride_i_h, stride_i_p, stride_i_n,
    stride_s_b, stride_s_h, stride_s_p, stride_s_n,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_SLOTS: tl.constexpr,
    STATE_MODE: tl.constexpr, F32_DOT: tl.constexpr, EVEN_P: tl.constexpr, EVEN_N: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Sequence ``program_id(0)``, head ``program_id(1)``, channels of P block
    ``program_id(2)``: writes out (T, H, P) for its tokens and one state row per STATE_MODE.

    x/z/out (T, H, P); dt (T, H); A, dt_bias (H,); B/C (T, G, N); D (H,) or (H, P);
    init (batch, H, P, N); cu_seqlens (batch+1,); cu_chunk (nchunks+1,); last_chunk (batch,);
    slot (batch,) (SCATTER_STATES with HAS_SLOTS); states: see STATE_MODE.
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    g = (h // heads_per_group).to(tl.int64)
    h64 = h.to(tl.int64)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    r = tl.arange(0, BLOCK_L)
    # EVEN_P / EVEN_N: no padding channels / state columns, the masks fold away.
    if EVEN_P:
        p_ok = tl.full([BLOCK_P], 1, tl.int1)
    else:
        p_ok = p < P
    if EVEN_N:
        n_ok = tl.full([BLOCK_N], 1, tl.int1)
    else:
        n_ok = n < N
    pn_ok = p_ok[:, None] & n_ok[None, :]
    p64 = p.to(tl.int64)
    n64 = n.to(tl.int64)
    dot_ty = x_ptr.dtype.element_ty

    A_h = tl.load(A_ptr + h).to(tl.float32)
    if HAS_DT_BIAS:
        bias_h = tl.load(dt_bias_ptr + h).to(tl.float32)
    else:
        bias_h = 0.0
    if HAS_D:
        if D_PER_P:
            D_p = tl.load(D_ptr + h64 * stride_D_h + p64 * stride_D_p, mask=p_ok, other=0.0)
        else:
            D_p = tl.load(D_ptr + h64 * stride_D_h + p64 * 0, mask=p_ok, other=0.0)
        D_p = D_p.to(tl.float32)
    else:
        D_p = 0.0
    # This sequence's chunks: (last chunk of b-1, last chunk of b].
    c_first = tl.load(last_chunk_ptr + b - 1, mask=b > 0, other=-1) + 1
    c_last = tl.load(last_chunk_ptr + b)

    b64 = b.to(tl.int64)
    if HAS_INIT:
        i_ptrs = (
            init_ptr + b64 * stride_i_b + h64 * stride_i_h
            + p64[:, None] * stride_i_p + n64[None, :] * stride_i_n
        )  # fmt: skip
        s = tl.load(i_ptrs, mask=pn_ok, other=0.0).to(tl.float32)
    else:
        s = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    x_h = x_ptr + h64 * stride_x_h + p[None, :] * stride_x_p  # (1, P) and (1, N) rows
    z_h = z_ptr + h64 * stride_z_h + p[None, :] * stride_z_p
    o_h = out_ptr + h64 * stride_o_h + p[None, :] * stride_o_p
    B_g = B_ptr + g * stride_B_g + n[None, :] * stride_B_n
    C_g = C_ptr + g * stride_C_g + n[None, :] * stride_C_n
    for c in range(c_first, c_last + 1):
        t_begin = tl.load(cu_chunk_ptr + c).to(tl.int32)
        t_end = tl.load(cu_chunk_ptr + c + 1).to(tl.int32)
        for t0 in range(t_begin, t_end, BLOCK_L):
            t32 = t0 + r
            t = t32.to(tl.int64)
            t_ok = t32 < t_end
            tp_ok = t_ok[:, None] & p_ok[None, :]
            tn_ok = t_ok[:, None] & n_ok[None, :]
            dt_t = tl.load(dt_ptr + t * stride_dt_t + h64 * stride_dt_h, mask=t_ok, other=0.0)
            dt_t = _dt(dt_t, bias_h, dt_lo, dt_hi, HAS_DT_BIAS, DT_SOFTPLUS)
            dt_t = tl.where(t_ok, dt_t, 0.0)  # padding rows: no decay, no input
            # Row offsets from the sub-block's tokens (int64): they depend on the loop, so no
            # 2-D offset tile is hoisted out of it to stay live through the whole scan.
            tt = t[:, None]
            x = tl.load(x_h + tt * stride_x_t, mask=tp_ok, other=0.0).to(tl.float32)  # (L, P)
            B = tl.load(B_g + tt * stride_B_t, mask=tn_ok, other=0.0)  # (L, N)
            C = tl.load(C_g + tt * stride_C_t, mask=tn_ok, other=0.0)  # (L, N)
            bad = tl.max(tl.max(_nonfinite(x), 1), 0) + tl.max(_nonfinite(dt_t), 0)
            bad += tl.max(tl.max(_nonfinite(B), 1), 0) + tl.max(tl.max(_nonfinite(C), 1), 0)
            if bad > 0:
                # Non-finite inputs: the spec's token recurrence for this sub-block, so that NaN
                # and inf reach exactly the outputs they reach there (a product form would
                # spread them, 0 * inf, or mix their signs differently). Its tokens are the rows
                # of the tiles already loaded, taken bit for bit.
                Bf = B.to(tl.float32)
                Cf = C.to(tl.float32)
                y = tl.zeros([BLOCK_L, BLOCK_P], dtype=tl.float32)
                for i in range(0, tl.minimum(t_end - t0, BLOCK_L)):
                    sel = r == i
                    dt_i = _row(dt_t[:, None], sel)  # (1,)
                    x_i = _row(x, sel)  # (P,)
                    B_i = _row(Bf, sel)  # (N,)
                    C_i = _row(Cf, sel)
                    a_i = A_h * dt_i[None, :]
                    s = _decay(s, a_i, a_i < EXP_F64_ZERO) + (dt_i * x_i)[:, None] * B_i[None, :]
                    s = tl.where(n_ok[None, :], s, 0.0)  # padding columns: inf * 0 must not stay
                    y_i = tl.sum(s * C_i[None, :], 1)  # (P,)
                    if F32_DOT is None:
                        y = tl.where(sel[:, None], y_i[None, :], y)
                    else:
                        _emit(y_i[None, :], x_i[None, :], D_p, z_h, o_h, tl.cast(t0 + i, tl.int64),
                              stride_z_t, stride_o_t, p_ok[None, :], HAS_D, HAS_Z)  # fmt: skip
                # (the float32 form writes token by token, the others a tile: what keeps each
                # within registers on NVIDIA; the values are the same)
                if F32_DOT is None:
                    _emit(y, x, D_p, z_h, o_h, tt, stride_z_t, stride_o_t, tp_ok, HAS_D, HAS_Z)
            else:
                # Decay exponents as direct sums (no differences of large cumulative sums, which
                # lose the digits that matter under strong gates): cum[i] = sum_{k <= i} a_k,
                # seg[i, j] = sum_{j < k <= i} a_k.
                a = A_h * dt_t
                rel = t32 - t_begin  # int32: (L, L) int64 masks cost registers
                # (masked row sums, not scans: a scan's lane masks stay live through the loop)
                cum = tl.sum(tl.where(rel[None, :] <= rel[:, None], a[None, :], 0.0), 1)  # (L,)
                seg = tl.cumsum(tl.where(rel[:, None] > rel[None, :], a[:, None], 0.0), 0)
                last = rel[:, None] == t0 + BLOCK_L - 1 - t_begin  # padded rows add 0
                to_end = tl.sum(tl.where(last, seg, 0.0), 0)  # sum_{j < k} a_k, (L,)
                total = tl.sum(a, 0)

                # The state this sub-block entered with, then its own tokens through the masked
                # decay matrix (L, L).
                gone = (a < EXP_F64_ZERO).to(tl.int32)
                dead = tl.max(tl.where(rel[None, :] <= rel[:, None], gone[None, :], 0), 1) > 0
                y = _mm(C, tl.trans(s), None, F32_DOT, dot_ty)
                y = _decay(y, cum[:, None], dead[:, None])
                CB = _mm(C, tl.trans(B), None, F32_DOT, dot_ty)
                causal = rel[:, None] >= rel[None, :]
                M = tl.where(causal, CB * tl.exp(seg) * dt_t[None, :], 0.0)
                y = _mm(M, x, y, F32_DOT, dot_ty)
                _emit(y, x, D_p, z_h, o_h, tt, stride_z_t, stride_o_t, tp_ok, HAS_D, HAS_Z)

                # The state after this sub-block.
                xw = x * (tl.exp(to_end) * dt_t)[:, None]  # (L, P)
                dead_all = tl.sum(gone, 0) > 0
                s = _mm(tl.trans(xw), B, _decay(s, total, dead_all), F32_DOT, dot_ty)
        if STATE_MODE == 1:
            s_pn = p64[:, None] * stride_s_p + n64[None, :] * stride_s_n
            st_ptrs = states_ptr + tl.cast(c, tl.int64) * stride_s_b + h64 * stride_s_h + s_pn
            tl.store(st_ptrs, s.to(states_ptr.dtype.element_ty), mask=pn_ok)
    s_pn = p64[:, None] * stride_s_p + n64[None, :] * stride_s_n
    if STATE_MODE == 0:
        st_ptrs = states_ptr + b64 * stride_s_b + h64 * stride_s_h + s_pn
        tl.store(st_ptrs, s.to(states_ptr.dtype.element_ty), mask=pn_ok)
    if STATE_MODE == 2:
        if HAS_SLOTS:
            slot = tl.load(slot_ptr + b).to(tl.int64)
            live = (slot != pad_slot_id) & (slot != null_block_id)
            # (tl.where, not '&': the interpreter cannot combine a scalar and a block mask)
            st_ok = tl.where(live, pn_ok, False)
        else:
            slot = b64
            st_ok = pn_ok
        st_ptrs = states_ptr + slot * stride_s_b + h64 * stride_s_h + s_pn
        tl.store(st_ptrs, s.to(states_ptr.dtype.element_ty), mask=st_ok)


def blocks_for(P: int, N: int, chunk_size: int, cfg: dict) -> dict[str, int]:
    """The kernel's tile sizes for a tuning config: BLOCK_L tokens per sub-block (at most the
    chunk, rounded up to a power of two), BLOCK_P channels, BLOCK_N = all of N; each >= 16."""
    block_l = min(int(cfg["BLOCK_L"]), triton.next_power_of_2(chunk_size))
    block_p = min(int(cfg["BLOCK_P"]), triton.next_power_of_2(P))
    return {
        "BLOCK_L": max(block_l, 16),
        "BLOCK_P": max(block_p, 16),
        "BLOCK_N": max(triton.next_power_of_2(N), 16),
    }
