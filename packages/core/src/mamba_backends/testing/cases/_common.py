"""Shared pieces of the case families: the dtype matrix and comparison helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mamba_backends.testing._tensors import StatePool
from mamba_backends.testing.case import Check, Picker

f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16

#: The dtype matrix: (activation dtype, state dtype).
DTYPE_PAIRS: tuple[tuple[torch.dtype, torch.dtype], ...] = (
    (f32, f32),
    (bf16, f32),
    (f16, f32),
    (bf16, bf16),
    (f16, f16),
    (f32, bf16),
    (f32, f16),
    (bf16, f16),
    (f16, bf16),
)
#: The pairs the quick subset uses: fp32, and one half dtype (with an fp32 state).
QUICK_PAIRS = ((f32, f32), (bf16, f32))


def pick_dtypes(pick: Picker) -> tuple[torch.dtype, torch.dtype]:
    return pick.choice(DTYPE_PAIRS)


def pick_lens(pick: Picker, n: int, hi: int, lo: int = 1) -> tuple[int, ...]:
    return tuple(pick.integer(lo, hi) for _ in range(n))


def is_tensor(check: Check, what: str, t: Any, shape: Sequence[int]) -> bool:
    """``t`` is a tensor of ``shape`` (records a failure otherwise)."""
    if not isinstance(t, Tensor):
        check.fail(f"{what}: expected a tensor, got {type(t).__name__}")
        return False
    if tuple(t.shape) != tuple(shape):
        check.fail(f"{what}: shape {tuple(t.shape)}, expected {tuple(shape)}")
        return False
    return True


def compare_slots(
    check: Check, what: str, actual: StatePool, expected: StatePool, slots: Sequence[int]
) -> None:
    """The indexed slots of two state pools match (the spec's is on the CPU)."""
    if not slots:
        return
    idx = list(slots)
    a = torch.stack([actual.view[s].cpu() for s in idx])
    e = torch.stack([expected.view[s] for s in idx])
    check.close(f"{what}[slots {idx}]", a, e)


def rows_of(lens: Sequence[int], seqs: Sequence[int], offset: int = 0) -> list[int]:
    """Token indices (in a packed batch of ``lens``) of the sequences ``seqs``."""
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    out: list[int] = []
    for i in seqs:
        out.extend(range(starts[i] + offset, starts[i + 1]))
    return out
