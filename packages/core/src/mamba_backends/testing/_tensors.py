"""Tensor helpers of the kit: seeded inputs, serving layouts of state pools, slot plans.

Every random tensor is drawn on the CPU from a seeded generator and then moved, so a case built
twice with the same seed (once on the backend's device, once on the CPU for the spec) holds the
same values, bit for bit, in the same layouts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

#: Layouts of a conv state pool ``(S, dim, W-1)``: contiguous; "sd" (a transposed view of a
#: ``(S, W-1, dim)`` buffer, vLLM's default); "page" (the sd view inside a larger per-slot page).
CONV_LAYOUTS = ("contig", "sd", "page")
#: Layouts of an SSM state pool ``(S, *inner)``: contiguous; "page" (a view inside a larger
#: per-slot page, so the slot stride exceeds the state size); "transposed" (last two inner dims
#: stored swapped).
SSM_LAYOUTS = ("contig", "page", "transposed")

_PAGE_EXTRA = 7  # elements of padding around a state inside its page (odd, to break alignment)


class Factory:
    """Seeded tensor source: same seed, same values, on any device."""

    def __init__(self, seed: int, device: torch.device | str) -> None:
        self.gen = torch.Generator().manual_seed(int(seed))
        self.device = torch.device(device)

    def _move(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return t.to(dtype).to(self.device)

    def randn(self, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
        """Normal(0, scale^2) values."""
        t = torch.randn(shape, generator=self.gen, dtype=torch.float64) * scale
        return self._move(t, dtype)

    def uniform(self, lo: float, hi: float, *shape: int, dtype: torch.dtype) -> Tensor:
        """Uniform(lo, hi) values."""
        t = torch.rand(shape, generator=self.gen, dtype=torch.float64) * (hi - lo) + lo
        return self._move(t, dtype)

    def ints(self, values: Sequence[int], dtype: torch.dtype = torch.int32) -> Tensor:
        """An integer tensor holding ``values`` (no randomness)."""
        return torch.tensor(list(values), dtype=dtype, device=self.device)

    def bools(self, values: Sequence[bool]) -> Tensor:
        return torch.tensor(list(values), dtype=torch.bool, device=self.device)


@dataclass
class StatePool:
    """A state pool as an op sees it (``view``) and the buffer it lives in (``base``)."""

    view: Tensor
    base: Tensor


def conv_state_pool(
    f: Factory,
    num_slots: int,
    dim: int,
    width: int,
    dtype: torch.dtype,
    layout: str,
    cols: int | None = None,
) -> StatePool:
    """A random conv state pool ``(S, dim, cols)`` in ``layout`` (see :data:`CONV_LAYOUTS`);
    ``cols`` defaults to ``W-1`` (speculative decoding keeps ``W-2+S``)."""
    k = width - 1 if cols is None else cols
    if layout == "contig":
        base = f.randn(num_slots, dim, k, dtype=dtype)
        return StatePool(base, base)
    if layout == "sd":
        base = f.randn(num_slots, k, dim, dtype=dtype)
        return StatePool(base.transpose(1, 2), base)
    if layout == "page":
        page = k * dim + 2 * _PAGE_EXTRA
        base = f.randn(num_slots, page, dtype=dtype)
        view = base[:, _PAGE_EXTRA : _PAGE_EXTRA + k * dim].view(num_slots, k, dim)
        return StatePool(view.transpose(1, 2), base)
    raise ValueError(f"unknown conv state layout {layout!r}; valid: {CONV_LAYOUTS}")


def ssm_state_pool(
    f: Factory, num_slots: int, inner: Sequence[int], dtype: torch.dtype, layout: str
) -> StatePool:
    """A random SSM state pool ``(S, *inner)`` in ``layout`` (see :data:`SSM_LAYOUTS`)."""
    inner = tuple(inner)
    numel = 1
    for n in inner:
        numel *= n
    if layout == "contig":
        base = f.randn(num_slots, *inner, dtype=dtype)
        return StatePool(base, base)
    if layout == "page":
        base = f.randn(num_slots, numel + 2 * _PAGE_EXTRA, dtype=dtype)
        view = base[:, _PAGE_EXTRA : _PAGE_EXTRA + numel].view(num_slots, *inner)
        return StatePool(view, base)
    if layout == "transposed":
        swapped = (*inner[:-2], inner[-1], inner[-2])
        base = f.randn(num_slots, *swapped, dtype=dtype)
        return StatePool(base.transpose(-1, -2), base)
    raise ValueError(f"unknown ssm state layout {layout!r}; valid: {SSM_LAYOUTS}")


def same_view(view: Tensor, base: Tensor, other_base: Tensor) -> Tensor:
    """The view of ``other_base`` that ``view`` is of ``base`` (same sizes, strides, offset)."""
    offset = view.storage_offset() - base.storage_offset()
    return torch.as_strided(
        other_base, view.size(), view.stride(), other_base.storage_offset() + offset
    )


def bits(t: Tensor) -> Tensor:
    """``t`` on the CPU as integers of the same width (for bit-exact comparison, NaN-safe)."""
    t = t.detach().cpu().contiguous()
    if t.is_floating_point():
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def changed_outside(before: Tensor, after: StatePool, allowed_slots: Sequence[int]) -> int:
    """How many elements of ``after.base`` differ from ``before`` outside ``allowed_slots``.

    ``before`` is a clone of the base buffer taken before the call. Padding inside pages and
    every slot not listed count as outside.
    """
    allowed = torch.zeros(after.base.shape, dtype=torch.bool)
    mask_view = same_view(after.view, after.base, allowed)
    for s in allowed_slots:
        mask_view[s] = True
    diff = bits(after.base) != bits(before)
    return int((diff & ~allowed).sum())


@dataclass(frozen=True)
class SlotPlan:
    """Which state slot each sequence (or decode row) of a batch uses.

    ``slots[i]`` is a pool index >= 1, or :data:`PAD_SLOT_ID` / :data:`NULL_BLOCK_ID` for a
    padded entry that the op must skip. Slot 0 is the null block; real slots are distinct.
    """

    slots: tuple[int, ...]
    has_init: tuple[bool, ...]
    num_slots: int

    @property
    def active(self) -> tuple[bool, ...]:
        return tuple(s > NULL_BLOCK_ID for s in self.slots)

    @property
    def active_slots(self) -> list[int]:
        return [s for s in self.slots if s > NULL_BLOCK_ID]


def plan_slots(n_real: int, n_pad: int, seed: int, all_init: bool | None = None) -> SlotPlan:
    """Distinct random slots for ``n_real`` entries plus ``n_pad`` pad/null entries, shuffled.

    The pool has spare slots that no entry uses (they must stay untouched). ``has_init`` is
    random unless ``all_init`` fixes it.
    """
    rng = random.Random(seed * 7919 + 17)
    num_slots = n_real + 3
    real = rng.sample(range(1, num_slots), n_real)
    pads = [PAD_SLOT_ID if i % 2 == 0 else NULL_BLOCK_ID for i in range(n_pad)]
    order = real + pads
    rng.shuffle(order)
    if all_init is None:
        init = tuple(rng.random() < 0.6 for _ in order)
    else:
        init = tuple(all_init for _ in order)
    return SlotPlan(tuple(order), init, num_slots)


def offsets(lens: Sequence[int]) -> list[int]:
    """``[0, l0, l0+l1, ...]`` (query_start_loc / cu_seqlens)."""
    out = [0]
    for n in lens:
        out.append(out[-1] + int(n))
    return out


def token_mask(lens: Sequence[int], keep: Sequence[bool]) -> Tensor:
    """Bool ``(sum(lens),)``: True for the tokens of sequences with ``keep[i]``."""
    parts = [torch.full((int(n),), bool(k)) for n, k in zip(lens, keep, strict=True)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
