"""Helpers shared by the CPU kernels: slot masks, activations, dtype rules, validation hook."""

from __future__ import annotations

import torch
from torch import Tensor


def silu_name(activation: object) -> bool:
    """Whether ``activation`` (vLLM's ``None``/``"silu"``/``"swish"``/bool) applies SiLU."""
    if activation is None or activation is False:
        return False
    if activation is True or activation in ("silu", "swish"):
        return True
    raise ValueError(f"activation must be None, True/False, 'silu' or 'swish'; got {activation!r}")


def require(cond: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``cond``."""
    if not cond:
        raise ValueError(message)


def as_index(t: Tensor, name: str) -> Tensor:
    """An integer index tensor as int64 (offsets can pass 2**31)."""
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    return t.to(torch.int64)


def slot_mask(
    slots: Tensor, num_slots: int, pad_slot_id: int | None, null_block_id: int | None, name: str
) -> Tensor:
    """Bool mask of the slots that are processed (neither pad nor null); checks the range.

    Args:
        slots: ``(B,)`` int64 slot per request.
        num_slots: size of the state pool.
    """
    valid = torch.ones_like(slots, dtype=torch.bool)
    if pad_slot_id is not None:
        valid &= slots != pad_slot_id
    if null_block_id is not None:
        valid &= slots != null_block_id
    live = slots[valid]
    if live.numel() and (bool((live < 0).any()) or bool((live >= num_slots).any())):
        raise ValueError(
            f"{name} holds slot ids outside [0, {num_slots}) that are neither pad nor null: "
            f"{live[(live < 0) | (live >= num_slots)].tolist()[:8]}"
        )
    return valid


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 when any input is fp64 (spec-style runs)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32
