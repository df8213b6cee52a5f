"""Helpers shared by the CPU kernels: slot masks, activations, dtype rules.

Argument checking is not here: every op calls the shared contract
(:mod:`mamba_backends.contract`) first, so the helpers below trust their inputs.
"""

from __future__ import annotations

import math

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


def all_finite(*tensors: Tensor | None) -> bool:
    """Whether every element of ``tensors`` is finite: one summing pass each (NaN and inf
    survive a sum; ``isfinite`` costs ~20x more). A sum that overflows counts as not finite,
    which only sends the caller down its slower exact path. bf16 sums in its own dtype (fp32
    accumulation inside, the range of fp32; about 5x faster than ``sum(dtype=float32)`` on a
    (2048, 24, 64) tensor, 2x on a decode batch); fp16 sums in fp32 (its own range would
    overflow on ordinary inputs)."""
    total = 0.0
    for t in tensors:
        if t is not None and t.numel():
            if t.dtype in (torch.float64, torch.float32, torch.bfloat16):
                total += float(t.sum())
            else:
                total += float(t.sum(dtype=torch.float32))
    return math.isfinite(total)


#: Below this a float64 ``exp`` is exactly 0 (the spec computes in float64).
SPEC_EXP_ZERO = -745.13


def spec_exp(x: Tensor) -> Tensor:
    """``exp(x)`` in ``x.dtype``, but zero only where the spec's float64 ``exp`` is zero: a
    result that underflows to 0 only in fp32 becomes the smallest positive value, so that
    ``inf * decay`` stays inf as in the spec (and ``inf * 0`` is NaN exactly where it is
    NaN there). For the exact (NaN/inf) paths; finite values differ by < 1e-38."""
    e = torch.exp(x)
    if x.dtype == torch.float64:
        return e
    tiny = torch.finfo(x.dtype).tiny
    return torch.where((e == 0) & (x >= SPEC_EXP_ZERO), torch.full_like(e, tiny), e)
