"""Spec: lightning / linear attention with per-head decay (MiniMax-Text-01, vLLM 0.32 names).

Per head ``h`` with decay slope ``s_h`` (``ed``/``slope_rate``) and state ``kv: [d, e]``::

    kv  <- exp(-s_h) * kv + outer(k_t, v_t)
    o_t  = q_t @ kv

There is no softmax and no scale. Everything runs in float64 with plain token loops; argument
checks run before any state is written and are public (``check_*_args``) for the kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_slot_indices,
    check_tensor,
    check_writable_state,
)

_F64 = torch.float64


def _fail(op: str, name: str, msg: str) -> ValueError:
    return ValueError(f"{op}: argument '{name}' {msg}")


def check_lightning_attention_args(
    q: Tensor, k: Tensor, v: Tensor, ed: Tensor, block_size: int, kv_history: Tensor | None
) -> tuple[int, int, int, int, int]:
    """``q, k: [b, h, n, d]``, ``v: [b, h, n, e]``, ``ed``: ``h`` slopes (``[h]`` or
    ``[1, h, 1, 1]``), ``kv_history: [b, h, d, e]``; returns ``(b, h, n, d, e)``."""
    op = "lightning_attention"
    check_tensor(op, "q", q, ndim=4, dtypes=FLOAT_DTYPES)
    b, h, n, d = q.shape
    dev = q.device
    check_tensor(op, "k", k, shape=(b, h, n, d), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "v", v, shape=(b, h, n, None), dtypes=FLOAT_DTYPES, device=dev)
    e = v.shape[3]
    check_tensor(op, "ed", ed, dtypes=FLOAT_DTYPES, device=dev)
    if ed.numel() != h or ed.dim() not in (1, 4):
        raise _fail(
            op,
            "ed",
            f"must hold one slope per head ([{h}] or [1, {h}, 1, 1]), got shape {tuple(ed.shape)}",
        )
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise _fail(op, "block_size", f"must be a positive int, got {block_size!r}")
    if kv_history is not None:
        check_tensor(
            op, "kv_history", kv_history, shape=(b, h, d, e), dtypes=FLOAT_DTYPES, device=dev
        )
    return b, h, n, d, e


def check_linear_decode_forward_args(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_caches: Tensor,
    slope_rate: Tensor,
    slot_idx: Tensor,
    BLOCK_SIZE: int,
) -> tuple[int, int, int]:
    """``q, k, v: [B, H, 1, D]``, ``kv_caches: [slots, H, D, D]``, ``slope_rate: [H]``,
    ``slot_idx: [B]``; returns ``(B, H, D)``."""
    op = "linear_decode_forward"
    check_tensor(op, "q", q, ndim=4, dtypes=FLOAT_DTYPES)
    B, H, one, D = q.shape
    if one != 1:
        raise _fail(op, "q", f"must have shape [B, H, 1, D], got {tuple(q.shape)}")
    dev = q.device
    check_tensor(op, "k", k, shape=(B, H, 1, D), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "v", v, shape=(B, H, 1, D), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "kv_caches", kv_caches, shape=(None, H, D, D), dtypes=FLOAT_DTYPES, device=dev)
    check_writable_state(op, "kv_caches", kv_caches)
    check_tensor(op, "slope_rate", slope_rate, dtypes=FLOAT_DTYPES, device=dev)
    if slope_rate.numel() != H:
        raise _fail(
            op, "slope_rate", f"must hold H={H} slopes, got shape {tuple(slope_rate.shape)}"
        )
    check_tensor(op, "slot_idx", slot_idx, shape=(B,), dtypes=INDEX_DTYPES, device=dev)
    check_slot_indices(
        op,
        "slot_idx",
        slot_idx,
        kv_caches.shape[0],
        pad_slot_id=-1,
        null_block_id=0,
        check_values=True,
        unique=True,
    )
    if not isinstance(BLOCK_SIZE, int) or isinstance(BLOCK_SIZE, bool) or BLOCK_SIZE < 1:
        raise _fail(op, "BLOCK_SIZE", f"must be a positive int, got {BLOCK_SIZE!r}")
    return B, H, D


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
    B, H, D = check_linear_decode_forward_args(q, k, v, kv_caches, slope_rate, slot_idx, BLOCK_SIZE)
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
