"""Contract of lightning / linear attention (``lightning_attention``, ``linear_decode_forward``)."""

from __future__ import annotations

from torch import Tensor

from mamba_backends.contract.generic import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_no_alias,
    check_positive_int,
    check_slot_indices,
    check_tensor,
    check_writable,
    fail,
    values_enabled,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID


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
        raise fail(
            op,
            "ed",
            f"must hold one slope per head ([{h}] or [1, {h}, 1, 1]), got shape {tuple(ed.shape)}",
        )
    check_positive_int(op, "block_size", block_size)
    if kv_history is not None:
        check_tensor(
            op, "kv_history", kv_history, shape=(b, h, d, e), dtypes=FLOAT_DTYPES, device=dev
        )
    return b, h, n, d, e


def check_linear_decode_forward_args(
    q: Tensor, k: Tensor, v: Tensor, kv_caches: Tensor, slope_rate: Tensor, slot_idx: Tensor,
    BLOCK_SIZE: int, *, check_values: bool | None = None,
) -> tuple[int, int, int]:  # fmt: skip
    """``q, k, v: [B, H, 1, D]``, ``kv_caches: [slots, H, D, D]`` (written in place, sharing
    memory with no input), ``slope_rate: [H]``, ``slot_idx: [B]``; returns ``(B, H, D)``."""
    op = "linear_decode_forward"
    check_tensor(op, "q", q, ndim=4, dtypes=FLOAT_DTYPES)
    B, H, one, D = q.shape
    if one != 1:
        raise fail(op, "q", f"must have shape [B, H, 1, D], got {tuple(q.shape)}")
    dev = q.device
    check_tensor(op, "k", k, shape=(B, H, 1, D), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "v", v, shape=(B, H, 1, D), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "kv_caches", kv_caches, shape=(None, H, D, D), dtypes=FLOAT_DTYPES, device=dev)
    check_writable(op, "kv_caches", kv_caches)
    check_tensor(op, "slope_rate", slope_rate, dtypes=FLOAT_DTYPES, device=dev)
    if slope_rate.numel() != H:
        raise fail(op, "slope_rate", f"must hold H={H} slopes, got shape {tuple(slope_rate.shape)}")
    check_no_alias(op, "kv_caches", kv_caches, {"q": q, "k": k, "v": v, "slope_rate": slope_rate})
    check_tensor(op, "slot_idx", slot_idx, shape=(B,), dtypes=INDEX_DTYPES, device=dev)
    check_slot_indices(
        op, "slot_idx", slot_idx, kv_caches.shape[0], pad_slot_id=PAD_SLOT_ID,
        null_block_id=NULL_BLOCK_ID, check_values=values_enabled(check_values, slot_idx),
        unique=True,
    )  # fmt: skip
    check_positive_int(op, "BLOCK_SIZE", BLOCK_SIZE)
    return B, H, D
