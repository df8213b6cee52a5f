"""CPU kernels: lightning / linear attention (prefill and decode).

Same signatures, shapes and in-place rules as the spec
(:mod:`mamba_backends.reference.lightning`) and vLLM 0.32. Decays and states are float32
(float64 inputs stay float64), and so are the products with the state; with bf16 inputs the
intra-chunk products may take bf16 operands (tuning key ``bf16_gemms``, off in the shipped
table; block sizes come from :mod:`mamba_backends.tuning`).

Prefill is chunked. With ``lam = exp(-s)`` per head, a chunk of ``L`` tokens entered with
state ``kv: [d, e]`` gives, for its token ``i`` (0-based)::

    o_i = lam^(i+1) q_i @ kv + sum_{j <= i} lam^(i-j) (q_i . k_j) v_j
    kv <- lam^L kv + sum_j lam^(L-1-j) outer(k_j, v_j)

The intra-chunk part is one masked decay matmul over all chunks at once; only the state
passing loops, once per chunk. Decode is vectorised over requests and heads, in blocks of
requests whose states stay cache-resident, with ``index_select``/``index_copy_`` on the cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mamba_backends.contract import (
    check_lightning_attention_args,
    check_linear_decode_forward_args,
)
from mamba_backends_cpu.ops._common import all_finite, spec_exp
from mamba_backends_cpu.ops.gdn import put_state_rows, state_rows
from mamba_backends_cpu.tuning import cpu_config, dtype_name


def _prefill_config(dtype: torch.dtype, D: int, E: int, block_size: int) -> dict[str, Any]:
    """Tuning of the prefill (CPU table ``lightning_attention.json``).

    ``chunk_size``: tokens per chunk when ``block_size`` is a multiple of it (else one chunk
    per block). ``bf16_gemms``: with bf16 inputs the intra-chunk products (``q k^T``, scores
    times ``v``) take bf16 operands (fp32 accumulation inside the GEMM, bf16 results); the
    state products are fp32 either way. ``False`` keeps every product fp32.
    """
    name = dtype_name(dtype)
    return cpu_config("lightning_attention", dtype=name, D=D, E=E, block_size=block_size)


def _decode_block_bytes(dtype: torch.dtype, D: int) -> int:
    """Decode runs requests in blocks of about this many state bytes (cache-resident)."""
    cfg = cpu_config("linear_decode_forward", dtype=dtype_name(dtype), D=D)
    return int(cfg["decode_block_bytes"])


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ed: Tensor,
    block_size: int,
    kv_history: Tensor | None,
    cdt: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """The spec's token recurrence, vectorised over batch and heads, for inputs holding NaN
    or inf: a chunked form spreads a non-finite token to every earlier token of its chunk
    (``0 * inf`` inside the masked products). Same shapes and returns as the prefill."""
    b, h, n, d = q.shape
    e = v.shape[-1]
    lam = spec_exp(-ed.reshape(h).to(cdt))[None, :, None, None]
    kv = torch.zeros(b, h, d, e, dtype=cdt)
    if kv_history is not None:
        kv.copy_(kv_history)
    nb = -(-n // block_size)
    states = torch.empty(b, h, nb + 1, d, e, dtype=torch.float32)
    o = torch.empty(b, h, n, e, dtype=cdt)
    for t in range(n):
        if t % block_size == 0:
            states[:, :, t // block_size] = kv
        kv = lam * kv + k[:, :, t, :, None].to(cdt) * v[:, :, t, None, :].to(cdt)
        o[:, :, t] = (q[:, :, t, None, :].to(cdt) @ kv)[..., 0, :]
    states[:, :, nb] = kv
    return o.to(q.dtype), states


def lightning_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ed: Tensor,
    block_size: int = 256,
    kv_history: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked lightning-attention prefill. Shapes and semantics: see the spec.

    ``q, k: [b, h, n, d]``; ``v: [b, h, n, e]``; ``ed``: ``h`` slopes; ``kv_history:
    [b, h, d, e]`` (read only). Returns ``o: [b, h, n, e]`` (``q.dtype``) and
    ``kv: [b, h, ceil(n / block_size) + 1, d, e]`` float32 (state entering each block, then
    the final state).
    """
    b, h, n, d, e = check_lightning_attention_args(q, k, v, ed, block_size, kv_history)
    cdt = _compute_dtype(q.dtype)
    if not all_finite(q, k, v, ed, kv_history):  # NaN/inf: the exact recurrence
        return _exact(q, k, v, ed, block_size, kv_history, cdt)
    tuning = _prefill_config(q.dtype, q.shape[-1], v.shape[-1], block_size)
    C = tuning["chunk_size"] if block_size % tuning["chunk_size"] == 0 else block_size
    per_block = block_size // C
    nc = -(-n // C)
    nb = -(-n // block_size)
    bh = b * h
    pad = nc * C - n

    # GEMM operand dtype: bf16 for bf16 inputs (tuning key bf16_gemms), else the compute dtype
    gd = torch.bfloat16 if (q.dtype == torch.bfloat16 and tuning["bf16_gemms"]) else cdt

    def chunks(x: Tensor) -> Tensor:  # [b, h, n, f] -> [bh, nc, C, f] in gd
        x = x.to(gd).reshape(bh, n, x.shape[-1])
        if pad:
            x = torch.cat([x, x.new_zeros(bh, pad, x.shape[-1])], dim=1)
        return x.view(bh, nc, C, x.shape[-1])

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    s = ed.reshape(h).to(cdt).repeat(b)  # [bh]
    i = torch.arange(C, dtype=cdt)
    # chunk lengths: C except for the last one
    L = torch.full((nc,), C, dtype=cdt)
    if nc:
        L[-1] = n - (nc - 1) * C
    diff = i[:, None] - i[None, :]
    decay_mat = torch.exp(-s[:, None, None] * diff.clamp(min=0)) * (diff >= 0)  # [bh, C, C]
    q_decay = torch.exp(-s[:, None] * (i + 1))  # [bh, C]
    kexp = L[:, None] - 1 - i[None, :]  # [nc, C]: exponent of lam for k_j at chunk end
    k_decay = torch.exp(-s[:, None, None] * kexp.clamp(min=0)) * (kexp >= 0)  # [bh, nc, C]
    state_decay = torch.exp(-s[:, None] * L)[..., None, None]  # [bh, nc, 1, 1]

    scores = (qc @ kc.transpose(-1, -2)) * decay_mat[:, None]  # [bh, nc, C, C] in cdt
    o = (scores.to(gd) @ vc).to(cdt)  # [bh, nc, C, e], the intra-chunk part
    # The state products stay in the compute dtype: a bf16 product rounds its result (CPU
    # matmuls have no fp32 output for bf16 operands), and the state's entries are sums over
    # the whole history, far larger than an output that cancels out of them.
    k_dec_t = (kc.to(cdt) * k_decay[..., None]).transpose(-1, -2).contiguous()
    kv_chunk = k_dec_t @ vc.to(cdt)  # [bh, nc, d, e]
    q_dec = qc.to(cdt) * q_decay[:, None, :, None]

    states = torch.empty(bh, nb + 1, d, e, dtype=torch.float32)
    kv = torch.zeros(bh, d, e, dtype=cdt)
    if kv_history is not None:
        kv.copy_(kv_history.reshape(bh, d, e))
    for c in range(nc):
        if c % per_block == 0:
            states[:, c // per_block] = kv
        o[:, c] += q_dec[:, c] @ kv
        kv.mul_(state_decay[:, c]).add_(kv_chunk[:, c])
    states[:, nb] = kv
    out = o.view(bh, nc * C, e)[:, :n].reshape(b, h, n, e).to(q.dtype)
    return out, states.view(b, h, nb + 1, d, e)


def linear_decode_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_caches: Tensor,
    slope_rate: Tensor,
    slot_idx: Tensor,
    BLOCK_SIZE: int = 32,
) -> Tensor:
    """One decode token per request, vectorised. Shapes and semantics: see the spec.

    ``q, k, v: [B, H, 1, D]``; ``kv_caches: [slots, H, D, D]`` updated in place (any
    strides) with ``index_select``/``index_copy_``; pad (-1) and null (0) slots are skipped,
    never written, and get zero outputs. ``BLOCK_SIZE`` (a Triton tile width) has no effect.
    Returns ``[B, H * D]`` in ``q.dtype``.
    """
    B, H, D = check_linear_decode_forward_args(q, k, v, kv_caches, slope_rate, slot_idx, BLOCK_SIZE)
    cdt = _compute_dtype(q.dtype)
    out = torch.zeros(B, H, D, dtype=q.dtype, device=q.device)
    live = torch.nonzero(slot_idx > 0).flatten()
    NL = live.numel()
    if NL == 0:
        return out.view(B, H * D)
    slots = slot_idx.to(torch.int64)[live]
    lam = torch.exp(-slope_rate.reshape(H).to(cdt))[None, :, None, None]  # [1, H, 1, 1]
    qt = q[live, :, 0].to(cdt)  # [NL, H, D]
    kt = k[live, :, 0].to(cdt)
    vt = v[live, :, 0].to(cdt)
    # requests run in blocks whose states stay cache-resident between the passes
    rows = state_rows(kv_caches)
    per_req = H * D * D * torch.finfo(cdt).bits // 8
    blk = max(1, _decode_block_bytes(q.dtype, q.shape[-1]) // per_req)
    buf = torch.empty((min(blk, NL), *rows.shape[1:]), dtype=kv_caches.dtype)
    o = torch.empty(NL, H, D, dtype=cdt)
    for b0 in range(0, NL, blk):
        sel = slice(b0, min(NL, b0 + blk))
        nb = sel.stop - sel.start
        # a private copy of the block's states (the gather buffer), updated in place
        kv = torch.index_select(rows, 0, slots[sel], out=buf[:nb]).to(cdt).view(nb, H, D, D)
        kv.mul_(lam).addcmul_(kt[sel, :, :, None], vt[sel, :, None, :])
        o[sel] = (qt[sel, :, None, :] @ kv).squeeze(-2)
        put_state_rows(kv_caches, slots[sel], kv)
    out[live] = o.to(q.dtype)
    return out.view(B, H * D)
