"""CPU tuning tables: one ``<op>.json`` per op, read through :mod:`mamba_backends.tuning`.

Registered as entry point ``cpu`` of group ``mamba_backends.tuning``. The PyTorch paths read
the op tables; the native C kernels read ``native_<kernel>.json`` (per-CPU tunables passed in
their argument structs, e.g. prefetch distances and work-item sizes). :func:`cpu_config` is the
kernels' checked view: the lookup on device ``"cpu"``, then a check of every field the kernel
reads (a hand-written ``MAMBA_BACKENDS_TUNING_DIR`` table gets a clear error, not a crash).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mamba_backends.tuning import TuningError, generation, lookup
from mamba_backends_cpu.isa import cpu_isa


def _int(v: Any) -> bool:
    return type(v) is int and v >= 1


def _pow2(v: Any) -> bool:
    return _int(v) and not v & (v - 1)


def _nonneg(v: Any) -> bool:
    return type(v) is int and v >= 0


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _ints(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_int(x) for x in v)


_POS, _NONNEG, _POW2, _BOOL, _LIST = (
    (_int, "an int >= 1"),
    (_nonneg, "an int >= 0"),
    (_pow2, "a power of two"),
    (_bool, "true or false"),
    (_ints, "a non-empty list of ints >= 1"),
)

#: What the PyTorch kernels read from each op's table: field -> (check, what it must be).
FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "chunk_gated_delta_rule": {"chunk_size": _POW2, "bf16_gemms": _BOOL},
    "fused_recurrent_gated_delta_rule": {"decode_block_bytes": _POS},
    "lightning_attention": {"chunk_size": _POS, "bf16_gemms": _BOOL},
    "linear_decode_forward": {"decode_block_bytes": _POS},
    "selective_scan_fn": {"block_lengths": _LIST},
    "mamba_chunk_scan_combined_varlen": {"block": _POS},
}

#: What the native C kernels read from their tables (passed in the kernels' argument structs).
NATIVE_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "native_conv": {"chunk_tokens": _POS, "prefetch": _NONNEG},
    "native_gdn": {"token_block": _POS, "rows_max_tokens": _NONNEG},
    "native_scan": {"prefetch": _NONNEG},
}
FIELDS.update(NATIVE_FIELDS)


def dtype_name(dtype: object) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the form of ``dtype`` keys in the tables)."""
    return str(dtype).removeprefix("torch.")


_checked: dict[tuple[Any, ...], dict[str, Any]] = {}


def cpu_config(op: str, **keys: int | str | bool) -> dict[str, Any]:
    """``lookup(op, "cpu", isa=<level>, **keys)``, with the fields of :data:`FIELDS` checked.

    ``isa`` is this process's :func:`mamba_backends_cpu.isa.cpu_isa` level (``"avx2"``,
    ``"avx512-bf16"``, ...), so that a table row may hold for one instruction set only.

    Every kernel call asks, so a checked config is memoised per (op, typed keys) until the
    tuning state changes (:func:`mamba_backends.tuning.generation`). Returns a shallow copy:
    the caller may set fields, but must not mutate nested values (lists).

    Raises:
        TuningError: no entry matches, or a field is missing or has the wrong type.
    """
    keys.setdefault("isa", cpu_isa().level)
    memo = (generation(), op, *((k, type(v), v) for k, v in sorted(keys.items())))
    hit = _checked.get(memo)
    if hit is not None:
        return dict(hit)
    cfg = lookup(op, "cpu", **keys)
    for name, (check, what) in FIELDS[op].items():
        if not check(cfg.get(name)):
            raise TuningError(
                f"tuning of {op!r} on cpu (keys {keys}): {name!r} must be {what}, "
                f"got {cfg.get(name)!r} in {cfg}"
            )
    if len(_checked) > 1024:  # generations change in tests: keep the memo bounded
        _checked.clear()
    _checked[memo] = cfg
    return dict(cfg)
