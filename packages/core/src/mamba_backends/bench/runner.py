"""Run a table of cases: ours and each baseline, side by side, into JSON-friendly rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mamba_backends.backend import MambaBackend
from mamba_backends.bench import baselines as bl
from mamba_backends.bench import gpu_baselines as gbl
from mamba_backends.bench.cases import DTYPES, CaseSpec, shape_label
from mamba_backends.bench.harness import (
    NOT_IMPLEMENTED,
    OK,
    UNAVAILABLE,
    Case,
    Impl,
    Inputs,
    Measurement,
    max_rel_diff,
    measure_side_by_side,
    ratio,
)
from mamba_backends.bench.inputs import BUILDERS

logger = logging.getLogger(__name__)

#: JSON row keys, in table order.
ROW_KEYS = (
    "op",
    "mamba_type",
    "shape",
    "dtype",
    "kind",
    "ours_backend",
    "ours_status",
    "ours_ms",
    "baseline",
    "baseline_status",
    "baseline_ms",
    "ratio",
    "best_baseline",
    "ratio_best",
    "gbps",
    "copy_gbps",
    "tokens_per_s",
    "tflops",
    "max_rel_diff",
    "note",
)


@dataclass
class BenchConfig:
    """How to run: repeats and warmup per timing, device, dtype override, op filter."""

    repeats: int = 20
    warmup: int = 3
    device: str = "cpu"
    dtype: str | None = None
    ops: tuple[str, ...] = ()


#: The baseline kinds a table row may name.
BASELINES = ("vllm", "vllm-cpp", "hf", "torch", "spec", "loop", *gbl.GPU_BASELINES)
#: Baselines too weak to count as "the best baseline" when a real one was measured.
WEAK_BASELINES = ("spec", "per-token loop")


def baseline_impl(kind: str, op: str, mamba_type: str, ours: Impl | None = None) -> Impl:
    """The baseline impl named ``kind`` (one of :data:`BASELINES`) for ``op``; ``torch`` is
    ``ours``'s backend on its own PyTorch path."""
    if kind == "torch":
        return bl.pytorch_path_impl(ours.backend if ours is not None else None, op)
    if kind == "vllm":
        return bl.vllm_impl(op)
    if kind == "vllm-cpp":
        return bl.vllm_cpp_impl(op)
    if kind == "hf":
        return bl.hf_impl(op)
    if kind == "spec":
        return bl.spec_impl(op, mamba_type)
    if kind in gbl.GPU_BASELINES:
        return gbl.gpu_baseline_impl(kind, op)
    if kind == "loop":
        if op != "selective_scan_fn":
            raise ValueError(f"the per-token loop baseline is for selective_scan_fn, not {op}")
        return bl.loop_impl()
    raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")


def ours_impl(backend: type[MambaBackend], op: str) -> Impl:
    """``backend.ops().<op>`` as the "ours" impl (``n/a`` with the reason if it will not load)."""
    name = backend.get_name()
    try:
        ops = backend.ops()
    except Exception as e:  # noqa: BLE001
        return Impl(name, None, unavailable=f"{type(e).__name__}: {e}")
    # The spec is a Python loop: when it is all the platform has, a few repeats suffice.
    slow = backend.ops_module.startswith("mamba_backends.reference")
    impl = bl.ops_impl(name, ops, op, repeats_cap=3 if slow else None)
    impl.backend = backend
    return impl


def make_case(
    spec: CaseSpec,
    dtype: torch.dtype,
    device: torch.device,
    ours: Impl,
) -> tuple[Case, Inputs]:
    """Build the inputs and impls of one row (raises if the inputs cannot be built)."""
    inputs = BUILDERS[spec.op](dict(spec.params), dtype, device)
    case = Case(
        op=spec.op,
        mamba_type=spec.mamba_type,
        shape=shape_label(spec, inputs.batch, inputs.state_bytes),
        dtype=dtype,
        ours=ours,
        baselines=[baseline_impl(b, spec.op, spec.mamba_type, ours) for b in spec.baselines],
        note=spec.note,
    )
    return case, inputs


def rows_for_case(
    case: Case,
    inputs: Inputs,
    cfg: BenchConfig,
    device: torch.device | None = None,
    roofline_bytes: int = 0,
) -> list[dict[str, Any]]:
    """Time ours and every baseline side by side on the same inputs; one row per baseline.

    Decode rows also time a torch copy of the same number of bytes in the same rounds; so do
    prefill rows given ``roofline_bytes`` (their GB/s then count those bytes).
    """
    bases = list(case.baselines) or [Impl("none", None, unavailable="no baseline")]
    impls = [case.ours, *bases]
    if inputs.prefill and roofline_bytes > 0:
        inputs.bytes_moved = roofline_bytes
    with_copy = inputs.bytes_moved > 0
    if with_copy:
        impls.append(bl.copy_impl(inputs.bytes_moved, device or torch.device("cpu")))
    ours, *measured = measure_side_by_side(impls, inputs, repeats=cfg.repeats, warmup=cfg.warmup)
    copy = measured.pop() if with_copy else None
    copy_ms = copy.median_ms if copy is not None else None
    copy_rate = inputs.bytes_moved / (copy_ms * 1e-3) / 1e9 if copy_ms else None
    rows = [_row(case, inputs, ours, base, copy_rate) for base in measured]
    mark_best(rows)
    return rows


def mark_best(rows: list[dict[str, Any]]) -> None:
    """Give every row of one case the best (fastest) measured baseline: ``best_baseline``,
    ``best_ms`` and ``ratio_best`` (ours / best). The spec and the per-token loop count only
    when nothing stronger was measured, so that no row looks good against a weak one."""
    ok = [r for r in rows if r["baseline_status"] == OK and r["baseline_ms"] is not None]
    strong = [r for r in ok if r["baseline"] not in WEAK_BASELINES] or ok
    best = min(strong, key=lambda r: r["baseline_ms"], default=None)
    for r in rows:
        r["best_baseline"] = best["baseline"] if best else None
        r["best_ms"] = best["baseline_ms"] if best else None
        r["ratio_best"] = ratio(r["ours_ms"], best["baseline_ms"]) if best else None


def _row(
    case: Case,
    inputs: Inputs,
    ours: Measurement,
    base: Measurement,
    copy_rate: float | None,
) -> dict[str, Any]:
    ms = ours.median_ms
    gbps = tokens = tflops = None
    if ms is not None and ms > 0:
        if inputs.prefill:
            tokens = inputs.tokens / (ms * 1e-3)
            if inputs.flops is not None:
                tflops = inputs.flops / (ms * 1e-3) / 1e12
        if inputs.bytes_moved:
            gbps = inputs.bytes_moved / (ms * 1e-3) / 1e9
    notes = [n for n in (case.note, ours.detail, base.detail) if n]
    return {
        "op": case.op,
        "mamba_type": case.mamba_type,
        "shape": case.shape,
        "dtype": str(case.dtype).removeprefix("torch."),
        "kind": "prefill" if inputs.prefill else "decode",
        "ours_backend": case.ours.name,
        "ours_status": ours.status,
        "ours_ms": ms,
        "ours_min_ms": min(ours.samples_ms, default=None),
        "ours_samples_ms": ours.samples_ms,
        "baseline": base.name,
        # A baseline that refuses the case (dtype, width) is "n/a", not "not implemented".
        "baseline_status": UNAVAILABLE if base.status == NOT_IMPLEMENTED else base.status,
        "baseline_ms": base.median_ms,
        "baseline_min_ms": min(base.samples_ms, default=None),
        "baseline_samples_ms": base.samples_ms,
        "ratio": ratio(ms, base.median_ms),
        "gbps": gbps,
        "copy_gbps": copy_rate,
        "bytes_moved": inputs.bytes_moved or None,
        "tokens_per_s": tokens,
        "tflops": tflops,
        "max_rel_diff": max_rel_diff(ours.output, base.output),
        "note": "; ".join(notes),
    }


def _error_row(spec: CaseSpec, dtype: torch.dtype, err: Exception) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(
        op=spec.op,
        mamba_type=spec.mamba_type,
        shape=shape_label(spec, 0, 0),
        dtype=str(dtype).removeprefix("torch."),
        ours_status="error",
        baseline_status="error",
        baseline=",".join(spec.baselines),
        note=f"inputs could not be built: {type(err).__name__}: {err}",
    )
    return row


def ours_measured(rows: Iterable[dict[str, Any]]) -> int:
    """How many rows timed our op (``ours_status`` ok); 0 means the run measured nothing of
    ours (every "ours" cell is n/a, an error or not implemented)."""
    return sum(1 for r in rows if r.get("ours_status") == OK)


def select(specs: Iterable[CaseSpec], ops: Sequence[str]) -> list[CaseSpec]:
    """Rows whose op (or mamba type) contains one of ``ops`` (all rows when empty)."""
    specs = list(specs)
    if not ops:
        return specs
    return [s for s in specs if any(o in s.op or o == s.mamba_type for o in ops)]


def run_bench(
    specs: Sequence[CaseSpec],
    cfg: BenchConfig,
    ours_for: Callable[[str, str], Impl],
) -> list[dict[str, Any]]:
    """Run ``specs``; ``ours_for(mamba_type, op)`` gives the "ours" impl (see
    :func:`ours_impl`). Never raises for a failing op: its row says why."""
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    device = torch.device(cfg.device)

    rows: list[dict[str, Any]] = []
    for spec in select(specs, cfg.ops):
        dtype = DTYPES[cfg.dtype or spec.dtype]
        logger.info("bench %s [%s] %s", spec.op, spec.mamba_type, dict(spec.params))
        try:
            case, inputs = make_case(spec, dtype, device, ours_for(spec.mamba_type, spec.op))
        except Exception as e:
            logger.warning("%s: inputs could not be built", spec.op, exc_info=True)
            rows.append(_error_row(spec, dtype, e))
            continue
        roof = gbl.roofline_bytes(spec.op, inputs) if "roofline" in spec.tags else 0
        rows.extend(rows_for_case(case, inputs, cfg, device, roof))
        del case, inputs
    return rows
