"""CPU kernels: gated delta net (gating, chunked prefill, recurrent decode).

Same signatures, shapes and in-place rules as the spec (:mod:`mamba_backends.reference.gdn`)
and vLLM 0.32. Gates, decays, the triangular inverse and every state are computed in float32
(float64 inputs stay float64), so fp32 GDN works on CPU, which vLLM-CPU refuses. With bf16
inputs the prefill's matrix products take bf16 operands (tuning key ``bf16_gemms``), as vLLM's
and fla's kernels do; fp16 and fp32 inputs use float32 products throughout.

Prefill (:func:`chunk_gated_delta_rule`) is the chunked WY/UT form, chunk size 64 (tuning key
``chunk_size``: the PyTorch paths read their block sizes through :mod:`mamba_backends.tuning`
from the tables in :mod:`mamba_backends_cpu.tuning`). Within a chunk with cumulative log decay
``G_i = g_1 + ... + g_i`` and decay ratios ``D_ij = exp(G_i - G_j)`` (``i >= j``)::

    A   = strict_lower((beta * k) @ k^T * D)          # the delta-rule interactions
    Tm  = (I + A)^-1          # 16x16 forward substitution, then block doubling
    u   = Tm @ (beta * v),   w = Tm @ (beta * k * exp(G))

and across chunks, for the state ``h: [K, V]`` entering the chunk::

    v_new = u - w @ h
    o     = (q * exp(G)) @ h + lower(q @ k^T * D) @ v_new
    h    <- exp(G_last) * h + (k * exp(G_last - G))^T @ v_new

All chunks of all sequences are computed in one batch; only the state passing loops, once
per chunk index, over every sequence that still has that chunk. Decode
(:func:`fused_recurrent_gated_delta_rule`) is vectorised over sequences and heads, in blocks
of sequences whose states stay cache-resident: gather (``index_select``), one read for
``S @ k`` and ``S @ q``, an in-place rank-1 update, scatter (``index_copy_``).

Native path: when the C kernels of :mod:`._native_gdn` are available (a C compiler, and
``MAMBA_BACKENDS_CPU_NATIVE`` not ``0``) and every tensor is fp32/bf16/fp16, all three ops
run as one fused C pass instead: gating elementwise; prefill and decode as the token-by-token
delta-rule recurrence in fp32, parallel over (sequence, value head), reading and writing
inputs, outputs and states in place through their strides (no gathers, no temporaries). The
PyTorch code above stays the fallback (and the float64 path).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import (
    check_chunk_gated_delta_rule_args,
    check_fused_gdn_gating_args,
    check_fused_recurrent_gated_delta_rule_args,
)
from mamba_backends.reference.gdn import L2NORM_EPS
from mamba_backends_cpu.native import gdn as _native_gdn
from mamba_backends_cpu.ops._common import all_finite, spec_exp
from mamba_backends_cpu.ops.ssd import segment_log_decays
from mamba_backends_cpu.tuning import cpu_config, dtype_name


def _prefill_config(dtype: torch.dtype, K: int, V: int) -> dict[str, Any]:
    """Tuning of the PyTorch prefill (CPU table ``chunk_gated_delta_rule.json``).

    ``chunk_size``: tokens per chunk, a power of two. ``bf16_gemms``: with bf16 inputs the
    matrix products take bf16 operands (fp32 accumulation inside the GEMM; gates, decays,
    triangular inverse and state stay fp32), 3-10x faster on CPUs with AVX512-BF16/AMX;
    ``False`` keeps every product fp32. fp16 and fp32 inputs always use fp32 products.
    """
    return cpu_config("chunk_gated_delta_rule", dtype=dtype_name(dtype), K=K, V=V)


def _decode_block_bytes(dtype: torch.dtype, K: int, V: int) -> int:
    """Decode runs sequences in blocks of about this many state bytes (cache-resident)."""
    cfg = cpu_config("fused_recurrent_gated_delta_rule", dtype=dtype_name(dtype), K=K, V=V)
    return int(cfg["decode_block_bytes"])


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _l2norm(x: Tensor) -> Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def _seq_starts_lens(B: int, T: int, cu_seqlens: Tensor | None) -> tuple[Tensor, Tensor]:
    """Start (in the flattened ``B * T`` tokens) and length of every sequence, int64 on CPU."""
    if cu_seqlens is None:
        return torch.arange(B, dtype=torch.int64) * T, torch.full((B,), T, dtype=torch.int64)
    cu = cu_seqlens.to("cpu", torch.int64)
    return cu[:-1].clone(), cu[1:] - cu[:-1]


def state_rows(state: Tensor) -> Tensor:
    """``state: [slots, ...]`` as ``[slots, -1]`` rows when each slot is contiguous (a view,
    so writes land in ``state``); otherwise ``state`` itself. Row gathers and scatters on the
    2-D view are an order of magnitude faster than on the 4-D tensor."""
    if state[0].is_contiguous():
        return state.view(state.shape[0], -1)
    return state


def put_state_rows(state: Tensor, index: Tensor, values: Tensor) -> None:
    """``state[index[i]] = values[i]`` in place (cast to ``state.dtype``), any strides."""
    rows = state_rows(state)
    values = values.reshape(values.shape[0], *rows.shape[1:]).to(state.dtype)
    rows.index_copy_(0, index.to(state.device), values)


def fused_gdn_gating(
    A_log: Tensor,
    a: Tensor,
    b: Tensor,
    dt_bias: Tensor,
    beta: float = 1.0,
    threshold: float = 20.0,
) -> tuple[Tensor, Tensor]:
    """``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``.

    ``A_log, dt_bias: [HV]``; ``a, b: [T, HV]``. Returns ``g: [1, T, HV]`` float32 and
    ``beta_output: [1, T, HV]`` in ``b.dtype``.
    """
    check_fused_gdn_gating_args(A_log, a, b, dt_bias, beta, threshold)
    if _native_gdn.supported(A_log, a, b, dt_bias) and _native_gdn.available():
        return _native_gdn.gating(A_log, a, b, dt_bias, beta, threshold)
    # fp32 throughout, and a softplus that cannot overflow (F.softplus computes
    # log1p(exp(beta * x)), inf past 88 when the threshold is above that)
    x = a.float() + dt_bias.float()
    if 0.0 < beta and threshold <= 80.0:  # exp(beta * x) <= e^80 is finite: torch's one pass
        g = -torch.exp(A_log.float()) * F.softplus(x, beta=beta, threshold=threshold)
        return g.unsqueeze(0), torch.sigmoid(b.float()).to(b.dtype).unsqueeze(0)
    y = beta * x
    softplus = torch.where(
        y > threshold, x, (y.clamp(min=0.0) + torch.log1p(torch.exp(-y.abs()))) / beta
    )
    g = -torch.exp(A_log.float()) * softplus
    return g.unsqueeze(0), torch.sigmoid(b.float()).to(b.dtype).unsqueeze(0)


def _unit_lower_inverse(A: Tensor) -> Tensor:
    """``(I + A)^-1`` for strictly lower-triangular ``A: [M, C, C]`` (``C`` a power of two).

    The 16x16 diagonal blocks are inverted by forward substitution (15 vectorised row steps
    over all blocks at once), then block doubling merges them: the inverse of
    ``[[X, 0], [Y, Z]]`` is ``[[X^-1, 0], [-Z^-1 Y X^-1, Z^-1]]``.
    """
    M, C, _ = A.shape
    s = min(16, C)
    nb = C // s
    diag = torch.diagonal(A.view(M, nb, s, nb, s), dim1=1, dim2=3)  # [M, s, s, nb]
    diag = diag.permute(0, 3, 1, 2).reshape(M * nb, s, s)
    inv = torch.eye(s, dtype=A.dtype).repeat(M * nb, 1, 1)
    for i in range(1, s):
        inv[:, i, :i] = -(diag[:, i : i + 1, :i] @ inv[:, :i, :i]).squeeze(1)
    inv = inv.view(M, nb, s, s)
    while s < C:
        nb = C // (2 * s)
        blocks = A.view(M, nb, 2, s, nb, 2, s)[:, :, 1, :, :, 0, :]  # [M, nb, s, nb, s]
        lower = torch.diagonal(blocks, dim1=1, dim2=3).permute(0, 3, 1, 2)  # [M, nb, s, s]
        top, bottom = inv[:, 0::2], inv[:, 1::2]
        new = torch.zeros(M, nb, 2 * s, 2 * s, dtype=A.dtype)
        new[:, :, :s, :s] = top
        new[:, :, s:, s:] = bottom
        new[:, :, s:, :s] = -(bottom @ lower @ top)
        inv = new
        s *= 2
    return inv[:, 0]


def _chunk_native(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float,
    initial_state: Tensor | None,
    output_final_state: bool,
    cu_seqlens: Tensor | None,
    l2norm: bool,
    core_attn_out: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Prefill by the fused C recurrence (:mod:`._native_gdn`), one pass per (sequence,
    value head, block of value rows) with the block's state in L1; arguments checked."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    BT = B * T
    starts, lens = _seq_starts_lens(B, T, cu_seqlens)
    N = lens.numel()
    slots = torch.arange(N, dtype=torch.int64)
    none = torch.full((N,), -1, dtype=torch.int64)
    src = slots if initial_state is not None else none
    dst = slots if output_final_state else none
    seq = torch.stack([starts, lens, src, dst], 1).contiguous()
    direct = core_attn_out is not None and core_attn_out.is_contiguous()
    if direct:
        assert core_attn_out is not None
        o = core_attn_out
    else:
        o = torch.empty(B, T, HV, V, dtype=q.dtype)
    final = torch.empty(N, HV, V, K, dtype=torch.float32) if output_final_state else None
    _native_gdn.delta_rule(
        q.reshape(BT, H, K), k.reshape(BT, H, K), v.reshape(BT, HV, V), g, beta,
        o.view(BT, HV, V), scale, l2norm, seq, initial_state, final, 0, None,
        int(lens.max()) if N else 0,
    )  # fmt: skip
    if core_attn_out is not None and not direct:
        o = core_attn_out.copy_(o)
    return o, final


def _chunk_exact(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None,
    initial_state: Tensor | None, output_final_state: bool, cu_seqlens: Tensor | None,
    l2norm: bool, core_attn_out: Tensor | None,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Prefill with NaN/inf among the inputs: the token recurrence in the spec's order of
    operations. A chunked form cannot reproduce where NaN and inf land (a masked product
    turns an infinite token into NaN for every earlier token of its chunk: ``0 * inf``)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    state = torch.zeros(N, HV, V, K, dtype=torch.float32)
    if initial_state is not None:
        state.copy_(initial_state)
    o, _ = _recurrent(
        q, k, v, g, beta, scale, state, True, cu_seqlens, None, None, l2norm, exact=True
    )
    if core_attn_out is not None:
        o = core_attn_out.copy_(o)
    return o, (state if output_final_state else None)


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_indices: Tensor | None = None,
    chunk_offsets: Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    core_attn_out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Chunked GDN prefill. Shapes and semantics: see the spec.

    ``q, k: [B, T, H, K]``; ``v: [B, T, HV, V]``; ``g, beta: [B, T, HV]``;
    ``initial_state: [N, HV, V, K]`` (read only); ``cu_seqlens: [N + 1]`` (``B == 1``).
    ``chunk_indices``/``chunk_offsets`` (vLLM's metadata, a function of ``cu_seqlens``)
    are unused. Returns ``o: [B, T, HV, V]`` (``q.dtype``, or ``core_attn_out``) and
    ``final_state: [N, HV, V, K]`` float32 (``None`` unless ``output_final_state``).
    """
    B, T, H, HV, K, V, N = check_chunk_gated_delta_rule_args(
        q, k, v, g, beta, scale, initial_state, cu_seqlens, core_attn_out
    )
    if cu_seqlens is not None and int(cu_seqlens[-1]) < T:
        # A padded tail: run the real tokens; the output rows past them are zero (the spec's).
        Tv = int(cu_seqlens[-1])
        o, final = chunk_gated_delta_rule(
            q[:, :Tv], k[:, :Tv], v[:, :Tv], g[:, :Tv], beta[:, :Tv], scale, initial_state,
            output_final_state, cu_seqlens, None, None, use_qk_l2norm_in_kernel,
            None if core_attn_out is None else core_attn_out[:, :Tv],
        )  # fmt: skip
        full = core_attn_out if core_attn_out is not None else q.new_zeros(B, T, HV, V)
        if core_attn_out is not None:
            full[:, Tv:].zero_()
        else:
            full[:, :Tv] = o
        return full, final
    if not finite_tokens(q, k, v, g, beta):
        return _chunk_exact(
            q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
            use_qk_l2norm_in_kernel, core_attn_out,
        )  # fmt: skip
    if _native_gdn.supported(q, k, v, g, beta, initial_state, core_attn_out) and (
        _native_gdn.available()
    ):
        return _chunk_native(
            q, k, v, g, beta, K**-0.5 if scale is None else float(scale), initial_state,
            output_final_state, cu_seqlens, use_qk_l2norm_in_kernel, core_attn_out,
        )  # fmt: skip
    cdt = _compute_dtype(q.dtype)
    tuning = _prefill_config(q.dtype, q.shape[-1], v.shape[-1])
    C = tuning["chunk_size"]
    BT = B * T
    sc = K**-0.5 if scale is None else float(scale)

    G = HV // H

    # Tokens, flattened, in the compute dtype; q/k stay at their H heads (shared by GVA).
    qf = q.reshape(BT, H, K).to(cdt)
    kf = k.reshape(BT, H, K).to(cdt)
    if use_qk_l2norm_in_kernel:
        qf, kf = _l2norm(qf), _l2norm(kf)
    qf = qf * sc

    # Chunk layout: chunk-major, sequences sorted by chunk count (longest first), so that
    # the sequences that still have chunk c are a prefix and their chunks are contiguous.
    starts, lens = _seq_starts_lens(B, T, cu_seqlens)
    nchunks = (lens + C - 1) // C
    order = torch.argsort(nchunks, descending=True, stable=True)
    max_c = int(nchunks.max()) if N else 0
    n_active = (nchunks[None, :] > torch.arange(max_c)[:, None]).sum(1)  # [max_c]
    offsets = torch.zeros(max_c + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(n_active, 0)
    NC = int(offsets[-1])
    c_of = torch.repeat_interleave(torch.arange(max_c), n_active)  # [NC]
    seq_of = order[torch.arange(NC) - offsets[:-1][c_of]]
    pos = c_of[:, None] * C + torch.arange(C)[None, :]  # [NC, C]
    valid = pos < lens[seq_of][:, None]
    tok = torch.where(valid, starts[seq_of][:, None] + pos, torch.full_like(pos, BT)).flatten()

    if NC == 0:  # no tokens at all: outputs are empty, states pass through
        out = core_attn_out if core_attn_out is not None else q.new_empty(B, T, HV, V)
        final = None
        if output_final_state:
            final = torch.zeros(N, HV, V, K, dtype=torch.float32)
            if initial_state is not None:
                final.copy_(initial_state)
        return out, final

    def gather(x: Tensor, heads: int) -> Tensor:
        """``[BT, heads, F]`` tokens -> ``[NC, heads, C, F]`` chunks (zero rows as padding)."""
        F = x.shape[-1]
        x = x.reshape(BT, heads * F)
        x = torch.cat([x, x.new_zeros(1, heads * F)]).index_select(0, tok)
        return x.view(NC, C, heads, F).permute(0, 2, 1, 3).contiguous()

    # GEMM operand dtype: bf16 for bf16 inputs (tuning key bf16_gemms), else the compute dtype.
    gd = torch.bfloat16 if (q.dtype == torch.bfloat16 and tuning["bf16_gemms"]) else cdt

    def in_gd(x: Tensor) -> Tensor:  # an fp32 product stored straight into a gd tensor
        return x if gd == cdt else x.to(gd)

    qc = gather(qf.to(gd), H)  # [NC, H, C, K]
    kc = gather(kf.to(gd), H)
    vc = gather(v.reshape(BT, HV, V).to(gd), HV)  # [NC, HV, C, V]
    gb = gather(torch.stack([g.reshape(BT, HV).to(cdt), beta.reshape(BT, HV).to(cdt)], -1), HV)
    gc = torch.cumsum(gb[..., 0], dim=-1)  # [NC, HV, C]
    bc = gb[..., 1]

    # Intra-chunk, all chunks at once (q.k and k.k products once per q/k head).
    seg = segment_log_decays(gb[..., 0])  # [NC, HV, C, C], -inf above the diagonal
    D = torch.exp(seg)  # decay ratios exp(G_i - G_j), 0 above the diagonal
    D5 = D.view(NC, H, G, C, C)
    kk = (kc @ kc.transpose(-1, -2))[:, :, None]  # [NC, H, 1, C, C]
    # only the strictly lower part of A is read by the inverse: no tril needed
    A = torch.mul(D5, kk).mul_(bc.view(NC, H, G, C, 1)).view(NC * HV, C, C)
    Tm = _unit_lower_inverse(A).view(NC, HV, C, C)
    u = in_gd(Tm * bc[..., None, :]) @ vc  # Tm @ (beta * v)
    # w = Tm @ (beta * exp(G) * k), the G value heads of a k head stacked as rows of one GEMM
    Tw = in_gd(Tm * (bc * torch.exp(gc))[..., None, :]).view(NC, H, G * C, C)
    w = (Tw @ kc).view(NC, HV, C, K)
    Aqk = in_gd(torch.mul(D5, (qc @ kc.transpose(-1, -2))[:, :, None])).view(NC, HV, C, C)
    g_last = gc[..., -1:]  # [NC, HV, 1]
    # (k * exp(G_last - G))^T per value head, built contiguous from the shared k: [NC,HV,K,C]
    k_decay = D[..., -1, :].to(gd).view(NC, H, G, 1, C)  # exp(G_last - G_j): the last row
    k_dec_t = (kc.transpose(-1, -2)[:, :, None] * k_decay).view(NC, HV, K, C)
    chunk_decay = torch.exp(g_last)[..., None]  # [NC, HV, 1, 1]

    # State passing across chunks, state kept in cdt. h_in[j]: the state entering chunk j.
    h = torch.zeros(N, HV, K, V, dtype=cdt)
    if initial_state is not None:
        h0 = state_rows(initial_state).index_select(0, order.to(initial_state.device))
        h.copy_(h0.view(N, HV, V, K).transpose(-1, -2))
    h_in = torch.empty(NC, HV, K, V, dtype=gd)
    v_new = torch.empty(NC, HV, C, V, dtype=gd)
    for c in range(max_c):
        na = int(n_active[c])
        sl = slice(int(offsets[c]), int(offsets[c]) + na)
        hc = h[:na]
        hg = h_in[sl]
        hg.copy_(hc)
        # v_new = u - w @ h, accumulated inside the GEMM and rounded once
        torch.baddbmm(
            u[sl].view(-1, C, V),
            w[sl].view(-1, C, K),
            hg.view(-1, K, V),
            alpha=-1,
            out=v_new[sl].view(-1, C, V),
        )
        hc.mul_(chunk_decay[sl]).add_(k_dec_t[sl] @ v_new[sl])  # h[:na], in place

    # Outputs, all chunks at once: inter-chunk read of h_in plus intra-chunk attention.
    q_dec = qc[:, :, None] * torch.exp(gc).view(NC, H, G, C, 1).to(gd)  # [NC, H, G, C, K]
    o = torch.baddbmm(
        (Aqk @ v_new).view(-1, C, V), q_dec.view(-1, C, K), h_in.view(-1, K, V)
    )  # [NC * HV, C, V] in gd

    # Scatter the chunk rows back to tokens; padding rows all land on a dummy row BT.
    o_rows = o.view(NC, HV, C, V).permute(0, 2, 1, 3).reshape(NC * C, HV * V)
    flat = torch.empty(BT + 1, HV * V, dtype=o.dtype)
    flat.index_copy_(0, tok, o_rows)
    o_tok = flat[:BT].view(B, T, HV, V)
    if core_attn_out is not None:
        out = core_attn_out.copy_(o_tok)
    elif o_tok.dtype == q.dtype:
        out = o_tok  # a contiguous view of the scatter buffer
    else:
        out = o_tok.to(q.dtype)
    final = None
    if output_final_state:
        final = torch.empty(N, HV, V, K, dtype=torch.float32)
        final[order] = h.transpose(-1, -2).float()
    return out, final


def fused_recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    inplace_final_state: bool = True,
    cu_seqlens: Tensor | None = None,
    ssm_state_indices: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[Tensor, Tensor]:
    """Recurrent GDN for decode and short multi-token (speculative) steps.

    Shapes and semantics: see the spec. Vectorised over sequences and heads; loops only over
    the token position within a sequence (1 for plain decode). States are gathered from
    ``initial_state: [slots, HV, V, K]`` with ``index_select`` and written back in place
    with ``index_copy_`` (any strides). Pad (-1) and null (0) slots are skipped and never
    written; their outputs are zero.
    """
    check_fused_recurrent_gated_delta_rule_args(
        q, k, v, g, beta, scale, initial_state, inplace_final_state, cu_seqlens,
        ssm_state_indices, num_accepted_tokens,
    )  # fmt: skip
    return _recurrent(
        q, k, v, g, beta, scale, initial_state, inplace_final_state, cu_seqlens,
        ssm_state_indices, num_accepted_tokens, use_qk_l2norm_in_kernel, exact=None,
    )  # fmt: skip


def finite_tokens(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor | None) -> bool:
    """Whether every token input is finite (``g = -inf``, a full reset, counts as finite)."""
    return all_finite(q, k, v, beta) and (g.numel() == 0 or float(g.max()) < float("inf"))


def _recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor | None, scale: float | None,
    initial_state: Tensor | None, inplace_final_state: bool, cu_seqlens: Tensor | None,
    ssm_state_indices: Tensor | None, num_accepted_tokens: Tensor | None,
    use_qk_l2norm_in_kernel: bool, exact: bool | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The recurrent op on checked arguments. ``exact``: NaN/inf among the inputs, so run the
    spec's own order of operations (``S <- exp(g) S``, ``d = beta (v - S k)``,
    ``S <- S + d k^T``, ``o = S q``), one sequence at a time, in PyTorch: the fused forms
    (``o = exp(g) (S q) + d (k . q)``) agree with it on finite values only. None: decided by
    the inputs (the native kernel reads them itself before it writes anything, which costs
    less than the torch reductions of :func:`finite_tokens`)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    cdt = _compute_dtype(q.dtype)
    BT = B * T
    G = HV // H
    sc = K**-0.5 if scale is None else float(scale)
    if (
        exact is not True
        and _native_gdn.supported(q, k, v, g, beta, initial_state)
        and (_native_gdn.available())
    ):
        has_state = initial_state is not None
        seq, max_len = _native_gdn.seq_table(
            B, T, cu_seqlens, ssm_state_indices, num_accepted_tokens, has_state
        )
        o = torch.zeros(B, T, HV, V, dtype=q.dtype)
        state_out: Tensor | None = initial_state
        mode = 0
        if not inplace_final_state:
            sdt = torch.float32 if initial_state is None else initial_state.dtype
            state_out = torch.zeros(BT, HV, V, K, dtype=sdt)
            mode = 2
        elif ssm_state_indices is not None and ssm_state_indices.dim() == 2:
            mode = 1
        dst2d = None
        if mode == 1:
            assert ssm_state_indices is not None
            dst2d = ssm_state_indices.to("cpu", torch.int64).contiguous()
        ran = _native_gdn.delta_rule(
            q, k, v, g, beta, o, sc, use_qk_l2norm_in_kernel, seq, initial_state, state_out,
            mode, dst2d, max_len, check_finite=exact is None,
        )  # fmt: skip
        if ran:
            assert state_out is not None
            return o, state_out
        exact = True  # a NaN/inf input: the kernel wrote nothing
    if exact is None:
        exact = not finite_tokens(q, k, v, g, beta)

    starts, lens = _seq_starts_lens(B, T, cu_seqlens)
    # where each sequence starts from; skipped sequences drop out here
    if ssm_state_indices is None:
        src = torch.arange(N, dtype=torch.int64)
    else:
        idx = ssm_state_indices.to("cpu", torch.int64)
        if idx.dim() == 1:
            src = idx
        else:
            col = torch.zeros(N, dtype=torch.int64)
            if num_accepted_tokens is not None:
                col = num_accepted_tokens.to("cpu", torch.int64) - 1
            src = idx.gather(1, col[:, None])[:, 0]
    keep = lens > 0
    if ssm_state_indices is not None:
        keep &= src > 0
    live = torch.nonzero(keep).flatten()  # sequences that run
    src_l, starts_l, lens_l = src[live], starts[live], lens[live]
    NL = live.numel()

    o_flat = torch.zeros(BT + 1, HV, V, dtype=q.dtype, device=q.device)
    per_token: Tensor | None = None
    if not inplace_final_state:
        sdt = torch.float32 if initial_state is None else initial_state.dtype
        per_token = torch.zeros(BT, HV, V, K, dtype=sdt)
    # token tensors with a zero row at BT for finished sequences (g = 0, beta = 0: no-op)
    qf = q.reshape(BT, H, K).to(cdt)
    kf = k.reshape(BT, H, K).to(cdt)
    if use_qk_l2norm_in_kernel:
        qf, kf = _l2norm(qf), _l2norm(kf)
    qkf = torch.stack([kf, qf * sc], dim=-2)  # [BT, H, 2, K]
    if G > 1:
        qkf = qkf.repeat_interleave(G, dim=1)  # value head hv reads q/k head hv // G
    qkf = torch.cat([qkf, qkf.new_zeros(1, HV, 2, K)])
    vf = torch.cat([v.reshape(BT, HV, V).to(cdt), v.new_zeros(1, HV, V, dtype=cdt)])
    gf = torch.cat([g.reshape(BT, HV).to(cdt), g.new_zeros(1, HV, dtype=cdt)])
    if beta is None:
        bf = torch.ones(BT + 1, HV, 1, dtype=cdt)
    else:
        bf = beta.reshape(BT, HV, V if beta.dim() == 4 else 1).to(cdt)
    bf = torch.cat([bf, bf.new_zeros(1, HV, bf.shape[-1])])

    # Sequences run in blocks whose states stay cache-resident between the passes.
    per_seq = HV * V * K * torch.finfo(cdt).bits // 8
    blk = max(1, _decode_block_bytes(q.dtype, q.shape[-1], v.shape[-1]) // per_seq)
    if exact:
        blk = 1  # no finished sequence rides along (0 * inf in its no-op update)
    buf: Tensor | None = None  # one gather buffer per call, reused by every block
    if initial_state is not None and NL:
        rows = state_rows(initial_state)
        buf = torch.empty((min(blk, NL), *rows.shape[1:]), dtype=initial_state.dtype)
    for b0 in range(0, NL, blk):
        sel = slice(b0, min(NL, b0 + blk))
        nb = sel.stop - sel.start
        # S: [nb * HV, V, K], a private copy of the block's states, updated in place
        if initial_state is not None:
            assert buf is not None
            Sg = torch.index_select(
                state_rows(initial_state), 0, src_l[sel].to(initial_state.device), out=buf[:nb]
            )
            S = Sg.to(cdt).view(nb * HV, V, K)
        else:
            S = torch.zeros(nb * HV, V, K, dtype=cdt)
        st, ln = starts_l[sel], lens_l[sel]
        for i in range(int(ln.max())):
            on = ln > i
            t = torch.where(on, st + i, torch.full_like(st, BT))  # [nb]
            kq = qkf[t].view(nb * HV, 2, K)
            decay = torch.exp(gf[t]).view(nb * HV, 1)
            if exact:
                decay = spec_exp(gf[t]).view(nb * HV, 1)
                S.mul_(decay[..., None])
                Sk = torch.bmm(S, kq[:, 0, :, None])[..., 0]
                delta = bf[t].view(nb * HV, -1) * (vf[t].view(nb * HV, V) - Sk)
                S.addcmul_(delta[:, :, None], kq[:, None, 0])
                o_t = torch.bmm(S, kq[:, 1, :, None])[..., 0]
                o_flat[t] = o_t.view(nb, HV, V).to(q.dtype)
            else:
                # one read of S for both S @ k and S @ q: [nb * HV, 2, V]
                Skq = torch.bmm(kq, S.transpose(1, 2))
                delta = bf[t].view(nb * HV, -1) * (vf[t].view(nb * HV, V) - decay * Skq[:, 0])
                k_dot_q = (kq[:, 0] * kq[:, 1]).sum(-1, keepdim=True)  # [nb * HV, 1]
                o_flat[t] = (decay * Skq[:, 1] + delta * k_dot_q).view(nb, HV, V).to(q.dtype)
                # S <- exp(g) S + outer(delta, k), in place
                S.mul_(decay[..., None]).addcmul_(delta[:, :, None], kq[:, None, 0])
            if per_token is not None:
                per_token[t[on]] = S.view(nb, HV, V, K)[on].to(per_token.dtype)
            elif ssm_state_indices is not None and ssm_state_indices.dim() == 2:
                assert initial_state is not None
                dst = idx[live[sel], i]
                w = on & (dst > 0)
                if bool(w.any()):
                    put_state_rows(initial_state, dst[w], S.view(nb, HV, V, K)[w])
        if per_token is None and (ssm_state_indices is None or ssm_state_indices.dim() == 1):
            assert initial_state is not None
            put_state_rows(initial_state, src_l[sel], S.view(nb, HV, V, K))
    o = o_flat[:BT].view(B, T, HV, V)
    if per_token is not None:
        return o, per_token.to(q.device)
    assert initial_state is not None
    return o, initial_state
