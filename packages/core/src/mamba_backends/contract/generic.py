"""The contract's vocabulary: its one error type and the checks every op family is built from.

Every check raises :class:`ContractError`, which carries the op and the argument it names.
Nothing here computes or writes anything, and nothing reads a tensor's *values* unless
:func:`values_enabled` says so (see :mod:`mamba_backends.contract` for the rule).

Conventions (see :mod:`mamba_backends.types`):

- a slot index equal to ``pad_slot_id`` (``PAD_SLOT_ID = -1``) or ``null_block_id``
  (``NULL_BLOCK_ID = 0``; ``None`` disables it) marks a padded request: it is skipped and never
  written. Every other slot index lies in ``[0, num_slots)``;
- a tensor the op writes (a state, an output, an in-place input) may have any strides except a
  zero stride on an axis longer than one: an ``expand``-ed view has no storage of its own per
  element, so a write through it lands on several elements at once.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
)  # fmt: skip
INDEX_DTYPES: tuple[torch.dtype, ...] = (torch.int32, torch.int64)
FLAG_DTYPES: tuple[torch.dtype, ...] = (
    torch.bool, torch.int8, torch.uint8, torch.int32, torch.int64,
)  # fmt: skip

#: Set to ``1`` to run the value checks on accelerator tensors too (they then synchronise).
CHECK_VALUES_ENV = "MAMBA_BACKENDS_CHECK_VALUES"


class ContractError(ValueError, TypeError):
    """An op's argument breaks the contract. ``op`` and ``arg`` name the op and the argument.

    It subclasses ``ValueError`` (bad shape, value, layout or aliasing) and also ``TypeError``
    (bad dtype or type), so that callers written against either keep working.
    """

    def __init__(self, op: str, arg: str, message: str) -> None:
        self.op = op
        self.arg = arg
        self.detail = message
        super().__init__(f"{op}: argument '{arg}' {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.op, self.arg, self.detail))


def fail(op: str, arg: str, message: str) -> ContractError:
    """The error to raise: ``op: argument 'arg' message``."""
    return ContractError(op, arg, message)


def values_enabled(check_values: bool | None, *tensors: Tensor | None) -> bool:
    """Whether value checks (index ranges, offsets, chunk metadata) run.

    ``True``/``False`` decide. ``None`` (the default) runs them when every given tensor lives
    on the CPU (reading it costs no device synchronisation), or when ``$MAMBA_BACKENDS_CHECK_
    VALUES`` is ``1`` (a debug switch: it synchronises). Meta tensors hold no values and are
    never read.
    """
    if check_values is not None:
        return check_values
    for t in tensors:
        if t is not None and not t.is_cpu:
            break
    else:
        return True  # the common CPU call: no environment read
    if any(t is not None and t.is_meta for t in tensors):
        return False
    return os.environ.get(CHECK_VALUES_ENV, "") == "1"


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    shape: Sequence[int | None] | None = None,
    ndim: int | Sequence[int] | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Check one tensor argument; ``None`` entries of ``shape`` match any size."""
    if not isinstance(t, Tensor):
        raise fail(op, name, f"must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            dims = " or ".join(map(str, allowed))
            raise fail(op, name, f"must have {dims} dims, got shape {tuple(t.shape)}")
    if shape is not None:
        got = t.shape
        bad = len(got) != len(shape)
        if not bad:
            for i, s in enumerate(shape):  # a plain loop: this runs several times per call
                if s is not None and s != got[i]:
                    bad = True
                    break
        if bad:
            want = tuple("*" if s is None else s for s in shape)
            raise fail(op, name, f"must have shape {want}, got {tuple(got)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise fail(op, name, f"must have dtype in ({names}), got {t.dtype}")
    if device is not None and t.device != device:
        raise fail(op, name, f"must be on device {device}, got {t.device}")
    return t


def check_optional_vector(
    op: str, name: str, t: Tensor | None, size: int, device: torch.device
) -> None:
    if t is not None:
        check_tensor(op, name, t, shape=(size,), dtypes=FLOAT_DTYPES, device=device)


def check_writable(op: str, name: str, t: Tensor) -> None:
    """A tensor the op writes may have any strides, but no zero stride on a real axis."""
    strides = t.stride()
    if 0 not in strides:
        return
    for size, stride in zip(t.shape, strides, strict=True):
        if size > 1 and stride == 0:
            raise fail(
                op, name, f"is written in place and must not be expanded (strides {t.stride()})"
            )


# --------------------------------------------------------------------------------------------
# Aliasing (from shapes, strides and pointers only: no values are read)
# --------------------------------------------------------------------------------------------

_EXACT_OVERLAP_LIMIT = 1 << 16  # elements; larger tensors of unlike layouts are judged by range


def _span(t: Tensor) -> tuple[int, int]:
    """First and one-past-last element offset of ``t`` in its storage."""
    lo = hi = int(t.storage_offset())
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if size > 1:
            if stride >= 0:
                hi += (size - 1) * stride
            else:
                lo += (size - 1) * stride
    return lo, hi + 1


def _reachable(d: int, dims: list[tuple[int, int]]) -> bool:
    """Whether ``d = sum c_i * stride_i`` with ``|c_i| < size_i`` (``dims`` by stride, desc)."""
    if not dims:
        return d == 0
    stride, size = dims[0]
    rest = dims[1:]
    reach = sum((n - 1) * s for s, n in rest)
    lo = max(-(size - 1), math.ceil((d - reach) / stride))
    hi = min(size - 1, math.floor((d + reach) / stride))
    if hi - lo > 3:
        return True  # the layout overlaps itself: stay conservative
    return any(_reachable(d - c * stride, rest) for c in range(lo, hi + 1))


def _offsets(t: Tensor) -> Tensor:
    off = torch.full((), int(t.storage_offset()), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride(), strict=True):
        off = off[..., None] + torch.arange(size, dtype=torch.int64) * stride
    return off.reshape(-1)


def overlap(a: Tensor, b: Tensor) -> str:
    """``"none"``, ``"same"`` (same elements in the same layout) or ``"partial"``."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.device.type == "meta":
        return "none"
    sa, sb = a.untyped_storage(), b.untyped_storage()
    if sa.data_ptr() != sb.data_ptr():
        return "none"
    if a.element_size() != b.element_size():
        ia, ib = a.element_size(), b.element_size()
        (la, ha), (lb, hb) = _span(a), _span(b)
        return "none" if ha * ia <= lb * ib or hb * ib <= la * ia else "partial"
    (la, ha), (lb, hb) = _span(a), _span(b)
    if ha <= lb or hb <= la:
        return "none"
    if a.shape == b.shape and a.stride() == b.stride():
        if a.storage_offset() == b.storage_offset():
            return "same"
        dims = sorted(
            ((abs(s), n) for s, n in zip(a.stride(), a.shape, strict=True) if n > 1 and s != 0),
            reverse=True,
        )
        d = int(b.storage_offset()) - int(a.storage_offset())
        return "partial" if _reachable(d, dims) else "none"
    if a.numel() <= _EXACT_OVERLAP_LIMIT and b.numel() <= _EXACT_OVERLAP_LIMIT:
        return "partial" if bool(torch.isin(_offsets(a), _offsets(b)).any()) else "none"
    return "partial"


def check_no_alias(
    op: str,
    name: str,
    written: Tensor | None,
    others: Mapping[str, Tensor | None],
    *,
    allow_same: Sequence[str] = (),
) -> None:
    """``written`` shares no memory with any of ``others``; the names in ``allow_same`` may be
    exactly ``written`` (same elements, same layout: the op then works in place)."""
    if written is None or written.numel() == 0 or written.device.type == "meta":
        return
    storage = written.untyped_storage().data_ptr()
    for other_name, other in others.items():
        if other is None or other.device != written.device:
            continue
        if other.untyped_storage().data_ptr() != storage:
            continue  # the common case, decided in one pointer comparison
        kind = overlap(written, other)
        if kind == "none" or (kind == "same" and other_name in allow_same):
            continue
        how = "is the same tensor as" if kind == "same" else "overlaps"
        raise fail(op, name, f"is written by the op and {how} argument '{other_name}'")


def check_no_aliases(
    op: str,
    writes: Mapping[str, Tensor | None],
    reads: Mapping[str, Tensor | None],
    *,
    allow_same: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Each tensor of ``writes`` shares no memory with the ``reads`` nor with the other
    ``writes`` (``allow_same[w]`` names the tensors that ``w`` may be exactly: in place).

    The same rule as :func:`check_no_alias` once per written tensor, decided first from one
    storage pointer per tensor: when no written tensor's storage holds anything else (the
    common case: inputs may share buffers among themselves), nothing more is looked at.
    """
    ptrs: dict[str, int] = {}
    for name, t in (*reads.items(), *writes.items()):
        if t is not None and name not in ptrs:
            ptrs[name] = t.untyped_storage().data_ptr()
    counts: dict[int, int] = {}
    for v in ptrs.values():
        counts[v] = counts.get(v, 0) + 1
    allow = allow_same or {}
    for name, t in writes.items():
        if t is None or counts[ptrs[name]] == 1:
            continue  # alone in its storage
        others = {**reads, **{k: v for k, v in writes.items() if k != name}}
        check_no_alias(op, name, t, others, allow_same=allow.get(name, ()))


# --------------------------------------------------------------------------------------------
# Offsets and slot indices (value checks)
# --------------------------------------------------------------------------------------------


_SMALL_INDEX_COUNT = 4096


def _check_offsets_list(
    op: str, name: str, vals: list[int], total: int, strictly_increasing: bool
) -> None:
    """:func:`check_offsets`'s value rules on a host list (the same messages)."""
    if vals[0] != 0:
        raise fail(op, name, f"must start at 0, got {vals[0]}")
    if vals[-1] > total:
        raise fail(op, name, f"values must lie in [0, {total}], got {vals}")
    for a, b in itertools.pairwise(vals):
        if b < a or (strictly_increasing and b == a):
            kind = "strictly increasing" if strictly_increasing else "non-decreasing"
            raise fail(op, name, f"must be {kind}, got {vals}")


def check_offsets(
    op: str,
    name: str,
    offsets: Tensor,
    total: int,
    *,
    check_values: bool,
    strictly_increasing: bool = False,
) -> None:
    """``offsets``: 1-D int token offsets, starting at 0, non-decreasing, ending at or before
    ``total`` (a padded tail ``offsets[-1] < total`` is legal)."""
    check_tensor(op, name, offsets, ndim=1, dtypes=INDEX_DTYPES)
    if offsets.numel() < 1:
        raise fail(op, name, "must hold at least one offset")
    if not check_values:
        return
    if offsets.numel() <= _SMALL_INDEX_COUNT:
        # Decode batches: a host list costs microseconds, torch ops tens of them.
        _check_offsets_list(op, name, offsets.tolist(), total, strictly_increasing)
        return
    v = offsets.detach().to("cpu", torch.int64)
    if int(v[0]) != 0:
        raise fail(op, name, f"must start at 0, got {int(v[0])}")
    if int(v[-1]) > total:
        raise fail(op, name, f"values must lie in [0, {total}], got {v.tolist()}")
    d = v[1:] - v[:-1]
    if bool((d < 0).any()) or (strictly_increasing and bool((d == 0).any())):
        kind = "strictly increasing" if strictly_increasing else "non-decreasing"
        raise fail(op, name, f"must be {kind}, got {v.tolist()}")


def _range_msg(slot: int, num_slots: int, pad: int | None, null: int | None) -> str:
    return f"holds slot {slot} outside [0, {num_slots}) (pad_slot_id={pad}, null_block_id={null})"


def check_slot_indices(
    op: str,
    name: str,
    indices: Tensor,
    num_slots: int,
    *,
    pad_slot_id: int | None,
    null_block_id: int | None,
    check_values: bool,
    unique: bool = False,
) -> None:
    """Every slot index is pad/null (skipped) or lies in ``[0, num_slots)``.

    With ``unique``, no two entries may write the same real slot.
    """
    check_tensor(op, name, indices, dtypes=INDEX_DTYPES)
    n = indices.numel()
    if not check_values or n == 0:
        return
    v = indices if indices.dim() == 1 else indices.reshape(-1)
    if n <= _SMALL_INDEX_COUNT:
        # Decode batches: a host list and a set cost microseconds, torch ops tens of them.
        vals = v.tolist()
        if min(vals) >= 0 and max(vals) < num_slots and not unique:
            return
        live = [s for s in vals if s != pad_slot_id and s != null_block_id]
        for s in live:
            if s < 0 or s >= num_slots:
                raise fail(op, name, _range_msg(s, num_slots, pad_slot_id, null_block_id))
        if unique and len(set(live)) != len(live):
            raise fail(op, name, f"writes the same slot twice: {vals}")
        return
    v = v.to("cpu", torch.int64)
    if int(v.min()) >= 0 and int(v.max()) < num_slots and not unique:
        return
    real = v
    for s in (pad_slot_id, null_block_id):
        if s is not None:
            real = real[real != s]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= num_slots):
        bad = real[(real < 0) | (real >= num_slots)]
        raise fail(op, name, _range_msg(int(bad[0]), num_slots, pad_slot_id, null_block_id))
    if unique and real.numel() > 1:
        srt = torch.sort(real).values
        if bool((srt[1:] == srt[:-1]).any()):
            raise fail(op, name, f"writes the same slot twice: {v.tolist()}")


# --------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------


def normalize_activation(op: str, activation: object) -> str | None:
    """vLLM accepts ``None``/``False``, ``True`` (= "silu"), ``"silu"`` and ``"swish"``."""
    if activation is True:
        return "silu"
    if activation is False or activation is None:
        return None
    if activation in ("silu", "swish"):
        return "silu"
    raise fail(op, "activation", f"must be None, True, 'silu' or 'swish', got {activation!r}")


def check_positive_int(op: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(op, name, f"must be a positive int, got {value!r}")


def check_not_supported(op: str, **args: object) -> None:
    """Raise ``NotImplementedError`` naming the first argument that is set (not None)."""
    for name, value in args.items():
        if value is not None:
            raise NotImplementedError(f"{op}: argument '{name}' is not supported by this kernel")


def check_sequence_slots(
    op: str,
    state_name: str,
    num_slots: int,
    batch: int,
    cache_indices: Tensor | None,
    has_initial_state: Tensor | None,
    device: torch.device,
    *,
    pad_slot_id: int | None,
    null_block_id: int | None,
    check_values: bool,
) -> None:
    """The per-sequence slot arguments of a varlen prefill: ``cache_indices`` ``(batch,)``
    (unique real slots in ``[0, num_slots)``; without it sequence ``b`` uses slot ``b``, so the
    pool named ``state_name`` needs ``batch`` slots) and ``has_initial_state`` ``(batch,)``."""
    if cache_indices is not None:
        check_tensor(op, "cache_indices", cache_indices, shape=(batch,), device=device)
        check_slot_indices(
            op, "cache_indices", cache_indices, num_slots, pad_slot_id=pad_slot_id,
            null_block_id=null_block_id, check_values=check_values, unique=True,
        )  # fmt: skip
    elif num_slots < batch:
        raise fail(op, state_name, f"needs >= {batch} slots without cache_indices")
    if has_initial_state is not None:
        check_tensor(
            op, "has_initial_state", has_initial_state, shape=(batch,), dtypes=FLAG_DTYPES,
            device=device,
        )  # fmt: skip
