"""Helpers shared by the CPU kernels: slot masks, activations, dtype rules.

Argument checking is not here: every op calls the shared contract
(:mod:`mamba_backends.contract`) first, so the helpers below trust their inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract import normalize_activation


def silu_name(activation: object) -> bool:
    """Whether ``activation`` (vLLM's ``None``/``"silu"``/``"swish"``/bool) applies SiLU."""
    return normalize_activation("activation", activation) is not None


def live_slots(slots: Tensor, pad_slot_id: int | None, null_block_id: int | None) -> Tensor:
    """Bool mask of the slots that are processed (neither pad nor null).

    Args:
        slots: ``(B,)`` int64 slot per request (ranges already checked by the contract).
    """
    valid = torch.ones_like(slots, dtype=torch.bool)
    for skip in (pad_slot_id, null_block_id):
        if skip is not None:
            valid &= slots != skip
    return valid


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 when any input is fp64 (spec-style runs)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32
