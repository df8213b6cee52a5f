"""Spec: lightning / linear attention with per-head decay (MiniMax-Text-01, vLLM 0.32 names).

Per head ``h`` with decay slope ``s_h`` (``ed``/``slope_rate``) and state ``kv: [d, e]``::

    kv  <- exp(-s_h) * kv + outer(k_t, v_t)
    o_t  = q_t @ kv

There is no softmax and no scale. Everything runs in float64 with plain token loops; argument
checks (:mod:`mamba_backends.contract.lightning`) run before any state is written.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract.lightning import (
    check_lightning_attention_args,
    check_linear_decode_forward_args,
)

_F64 = torch.float64


def lightning_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ed: Tensor,
    block_size: int = 256,
    kv_history: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Prefill of one batch of equal-length sequences (vLLM's ``lightning_attention``).

    Shapes: ``q, k: [b, h, n, d]``; ``v: [b, h, n, e]``; ``ed``: per-head decay slopes,
    ``[h]`` or ``[1, h, 1, 1]``; ``kv_history: [b, h, d, e]``, the state before the first
    token (zeros when ``None``; never modified).

    Returns ``(o, kv)``: ``o: [b, h, n, e]`` in ``q.dtype``; ``kv: [b, h, NB + 1, d, e]``
    float32 with ``NB = ceil(n / block_size)``, where ``kv[:, :, i]`` is the state entering
    block ``i`` of ``block_size`` tokens and ``kv[:, :, -1]`` is the final state (what vLLM's
    layers copy back into the cache). vLLM's kernel always uses blocks of 256 tokens, the
    default, so the two agree for ``block_size=256``.
    """
    b, h, n, d, e = check_lightning_attention_args(q, k, v, ed, block_size, kv_history)
    s = ed.reshape(h).to("cpu", _F64)
    decay = torch.exp(-s)[None, :, None, None]  # [1, h, 1, 1]
    kv = torch.zeros(b, h, d, e, dtype=_F64)
    if kv_history is not None:
        kv = kv_history.to("cpu", _F64).clone()
    nb = -(-n // block_size)
    states = torch.zeros(b, h, nb + 1, d, e, dtype=_F64)
    o = torch.zeros(b, h, n, e, dtype=_F64)
    for t in range(n):
        if t % block_size == 0:
            states[:, :, t // block_size] = kv
        kt = k[:, :, t].to("cpu", _F64)  # [b, h, d]
        vt = v[:, :, t].to("cpu", _F64)  # [b, h, e]
        kv = decay * kv + kt[..., :, None] * vt[..., None, :]
        o[:, :, t] = torch.einsum("bhd,bhde->bhe", q[:, :, t].to("cpu", _F64), kv)
    states[:, :, nb] = kv
    return o.to(q.device, q.dtype), states.to(q.device, torch.float32)


def linear_decode_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_caches: Tensor,
    slope_rate: Tensor,
    slot_idx: Tensor,
    BLOCK_SIZE: int = 32,
) -> Tensor:
    """One decode token per request (vLLM's ``linear_decode_forward_triton``).

    Shapes: ``q, k, v: [B, H, 1, D]``; ``kv_caches: [slots, H, D, D]`` (any strides, any
    float dtype), updated in place at ``slot_idx: [B]``; ``slope_rate``: ``H`` slopes.
    ``BLOCK_SIZE`` is the Triton kernel's tile width; it cannot change the result.

    A request whose slot is ``PAD_SLOT_ID`` (-1) or ``NULL_BLOCK_ID`` (0) is skipped: its
    output row is zero and no cache is written (vLLM skips -1; slot 0 is vLLM's null block,
    never handed to a request). Returns ``[B, H * D]`` in ``q.dtype``.
    """
    B, H, D = check_linear_decode_forward_args(
        q, k, v, kv_caches, slope_rate, slot_idx, BLOCK_SIZE, check_values=True
    )
    decay = torch.exp(-slope_rate.reshape(H).to("cpu", _F64))[:, None, None]  # [H, 1, 1]
    o = torch.zeros(B, H, D, dtype=_F64)
    for i in range(B):
        slot = int(slot_idx[i])
        if slot <= 0:
            continue
        kt = k[i, :, 0].to("cpu", _F64)  # [H, D]
        vt = v[i, :, 0].to("cpu", _F64)
        kv = decay * kv_caches[slot].to("cpu", _F64) + kt[:, :, None] * vt[:, None, :]
        o[i] = torch.einsum("hd,hde->he", q[i, :, 0].to("cpu", _F64), kv)
        kv_caches[slot].copy_(kv)
    return o.reshape(B, H * D).to(q.device, q.dtype)
