"""The timing harness: ours and baselines on the same inputs, in the same process.

A :class:`Case` is one op at one shape and dtype, with its :class:`Inputs` (a dict of named
tensors and scalars, built by :mod:`mamba_backends.bench.inputs`); each :class:`Impl` (ours, a
baseline) is a callable on those inputs. For every case the harness

1. validates each impl once on a fresh clone of the inputs: the call must return (an impl that
   raises ``NotImplementedError`` is reported as "not implemented", any other error as "error",
   never a crash), its output must be finite and non-zero, and ours is compared with each
   baseline (``max_rel_diff``, informational: the conformance kit is the judge of correctness);
2. times the impls interleaved (one call of each per round), each on its own clone:
   ``warmup`` rounds, then ``repeats`` timed rounds, each call bracketed by a device
   synchronisation when the tensors live on an accelerator; inputs that the op overwrites
   (``Inputs.restore``) are restored from a pristine copy before each call, outside the timed
   region;
3. reports the median, and ``ratio = ours median / baseline median``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: A row's status: measured, or why not.
OK, NOT_IMPLEMENTED, UNAVAILABLE, ERROR = "ok", "not implemented", "n/a", "error"


@dataclass
class Inputs:
    """One call's arguments plus what the harness needs to know about them.

    Attributes:
        args: keyword arguments, by name (tensors, ints, floats, bools, None).
        restore: names of tensors the op overwrites (e.g. ``delta`` for ``selective_scan_fn``)
            that must be restored before every call so that each call does the same work.
        output: picks the op's main output from ``(result, args)``: the returned tensor, or a
            preallocated ``out`` argument.
        prefill: True for prefill rows (tokens/s), False for decode rows (GB/s).
        tokens: tokens processed per call (prefill rows).
        bytes_moved: bytes a call must read plus write at minimum (decode rows): touched state
            slots twice (read and write), inputs and outputs once.
        flops: floating-point operations per call, or None where no simple formula applies.
        state_bytes: bytes of the touched state slots (decode rows).
        batch: sequences per call.
    """

    args: dict[str, Any]
    output: Callable[[Any, dict[str, Any]], torch.Tensor]
    restore: tuple[str, ...] = ()
    prefill: bool = True
    tokens: int = 0
    bytes_moved: int = 0
    flops: float | None = None
    state_bytes: int = 0
    batch: int = 0


@dataclass
class Impl:
    """An implementation of a case's op: ``fn(**inputs.args)`` semantics via ``call(args)``.

    ``unavailable`` holds the reason when the implementation cannot be imported here (the row is
    then marked ``n/a``). ``repeats_cap`` bounds the timed repeats of slow baselines (the spec,
    the per-token loop). ``output`` overrides ``Inputs.output`` (a reference measurement that
    does not compute the op, like the copy bandwidth, which also sets ``needs_inputs=False``).
    """

    name: str
    call: Callable[[dict[str, Any]], Any] | None
    unavailable: str = ""
    repeats_cap: int | None = None
    output: Callable[[Any, dict[str, Any]], torch.Tensor] | None = None
    needs_inputs: bool = True
    #: the backend class behind an "ours" impl (the ``torch`` baseline runs its PyTorch path)
    backend: Any = None


@dataclass
class Case:
    """One op at one shape and dtype, with ours and its baselines."""

    op: str
    mamba_type: str
    shape: str
    dtype: torch.dtype
    ours: Impl
    baselines: Sequence[Impl]
    note: str = ""


@dataclass
class Measurement:
    """The outcome of validating and timing one impl on one case."""

    name: str
    status: str
    median_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    detail: str = ""
    output: torch.Tensor | None = None


def device_of(args: dict[str, Any]) -> torch.device:
    """The device of the first tensor argument (CPU when there is none)."""
    for v in args.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cpu":
        return
    mod = getattr(torch, device.type, None)
    sync = getattr(mod, "synchronize", None)
    if callable(sync):
        sync()


def clone_args(args: dict[str, Any]) -> dict[str, Any]:
    """Deep copy of the tensor arguments, keeping each tensor's strides (views stay views).

    Tensors that are views of a larger buffer (a conv state as a ``(dim, W-1)`` view of a
    ``(W-1, dim)`` page) or stride-0 expansions are rebuilt over a clone of their storage span.
    """
    out: dict[str, Any] = {}
    for k, v in args.items():
        out[k] = _clone_tensor(v) if isinstance(v, torch.Tensor) else v
    return out


def _clone_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.is_contiguous():
        return t.clone()
    base = t
    while base._base is not None:
        base = base._base
    if base.is_contiguous() and base.data_ptr() <= t.data_ptr():
        new_base = base.clone()
        offset = t.storage_offset() - base.storage_offset()
        return new_base.as_strided(t.size(), t.stride(), new_base.storage_offset() + offset)
    return t.clone()


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    before: Callable[[], None] | None = None,
) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``before`` runs ahead of every call, outside the timed region (input restoration).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    synchronize(device)
    samples: list[float] = []
    for _ in range(repeats):
        if before is not None:
            before()
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def check_output(out: Any, where: str) -> torch.Tensor:
    """The output must be a tensor, finite, and not all zeros: a benchmark never times a no-op."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{where}: the op's output is {type(out).__name__}, not a tensor")
    if out.numel() == 0:
        raise ValueError(f"{where}: the op produced an empty output")
    o = out.detach().float()
    if not bool(torch.isfinite(o).all()):
        raise ValueError(f"{where}: the op's output has non-finite values (or was never written)")
    if not bool((o != 0).any()):
        raise ValueError(f"{where}: the op's output is all zeros (no work done?)")
    return out.detach().to("cpu", torch.float32).clone()


def _poison_outputs(args: dict[str, Any]) -> None:
    # A preallocated output must be written by the op: start it as NaN so that a skipped write
    # fails check_output.
    out = args.get("out")
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        out.fill_(float("nan"))


def _validate(impl: Impl, inputs: Inputs) -> Measurement:
    """One call on a fresh clone: the output must exist; never raises for a failing impl."""
    if impl.call is None:
        return Measurement(impl.name, UNAVAILABLE, detail=impl.unavailable or "not importable")
    args = clone_args(inputs.args) if impl.needs_inputs else {}
    _poison_outputs(args)
    pick = impl.output or inputs.output
    try:
        result = impl.call(args)
        output = check_output(pick(result, args), impl.name)
    except NotImplementedError as e:
        return Measurement(impl.name, NOT_IMPLEMENTED, detail=str(e))
    except Exception as e:  # a failing impl is a row, not a crash
        logger.info("%s failed", impl.name, exc_info=True)
        return Measurement(impl.name, ERROR, detail=f"{type(e).__name__}: {e}")
    return Measurement(impl.name, OK, output=output)


def measure_side_by_side(
    impls: Sequence[Impl], inputs: Inputs, *, repeats: int, warmup: int
) -> list[Measurement]:
    """Validate each impl, then time the valid ones interleaved, one call each per round.

    Interleaving makes ours and the baselines share the machine's load (timings on a busy
    host drift); it also means no impl finds its states warm in cache from its own previous
    call, as in serving, where every other layer runs between two calls of one layer. Each
    impl times its own clone of the inputs; ``Inputs.restore`` tensors are restored before
    every call, outside the timed region. Never raises for a failing impl.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    results = [_validate(impl, inputs) for impl in impls]
    live = [i for i, m in enumerate(results) if m.status == OK]
    clones = {i: clone_args(inputs.args) if impls[i].needs_inputs else {} for i in live}
    device = device_of(inputs.args)
    budget: dict[int, int] = {}
    for i in live:
        cap = impls[i].repeats_cap
        budget[i] = repeats if cap is None else max(1, min(repeats, cap))

    def one_call(i: int) -> float:
        args = clones[i]
        for k in inputs.restore:
            if k in args:
                args[k].copy_(inputs.args[k])
        call = impls[i].call
        assert call is not None
        synchronize(device)
        t0 = time.perf_counter()
        call(args)
        synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    for r in range(warmup + max(budget.values(), default=0)):
        for i in list(live):
            if r >= warmup + budget[i]:
                continue
            try:
                ms = one_call(i)
            except Exception as e:  # noqa: BLE001 - a failing impl is a row, not a crash
                results[i] = Measurement(
                    impls[i].name, ERROR, detail=f"while timing: {type(e).__name__}: {e}"
                )
                live.remove(i)
                continue
            if r >= warmup:
                results[i].samples_ms.append(ms)
    for i in live:
        results[i].median_ms = statistics.median(results[i].samples_ms)
    return results


def measure(impl: Impl, inputs: Inputs, *, repeats: int, warmup: int) -> Measurement:
    """Validate then time one impl (see :func:`measure_side_by_side`)."""
    return measure_side_by_side([impl], inputs, repeats=repeats, warmup=warmup)[0]


def max_rel_diff(ours: torch.Tensor | None, base: torch.Tensor | None) -> float | None:
    """``max|ours - base| / max|base|`` (None when either is missing or shapes differ)."""
    if ours is None or base is None or ours.shape != base.shape:
        return None
    scale = float(base.abs().max())
    return float((ours - base).abs().max()) / (scale if scale > 0 else 1.0)


def ratio(ours_ms: float | None, base_ms: float | None) -> float | None:
    """``ours / baseline`` of two measured medians (None unless both were measured)."""
    if ours_ms is None or base_ms is None or base_ms <= 0 or math.isnan(base_ms):
        return None
    return ours_ms / base_ms
