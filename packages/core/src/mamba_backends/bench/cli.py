"""``mamba-backends bench``: side-by-side timings, ours / baseline, in one process.

"Ours" is ``get_mamba_backend(type).ops().<op>`` on the current platform (``--backend``
overrides it per mamba type). Each row is timed against vLLM-CPU's op, the spec or a per-token
loop (see :mod:`mamba_backends.bench.cases`). Writes ``OUT/bench.json`` and ``OUT/bench.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform as _py_platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mamba_backends.bench.cases import DTYPES, table_for
from mamba_backends.bench.harness import Impl
from mamba_backends.bench.report import format_table, write_json, write_plot
from mamba_backends.bench.runner import BenchConfig, ours_impl, ours_measured, run_bench, select

logger = logging.getLogger(__name__)


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark this platform's ops against baselines (ours / baseline, same process)",
    )
    p.add_argument(
        "--ops",
        nargs="+",
        default=[],
        metavar="OP",
        help="only rows whose op contains OP, or whose mamba type is OP",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and few repeats (CI smoke; numbers are not meaningful)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per measurement (median reported; default 20, quick 3)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="output folder for bench.json and bench.png (default bench-results)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="activation dtype of every row (default: each row's own)",
    )
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="[TYPE=]NAME",
        help="our backend for a mamba type: a registered name or dotted class path "
        "(without TYPE=, applied to the backend's own type; a prefix such as 'cpu' takes "
        "cpu.<type> for every type); repeatable",
    )
    p.add_argument(
        "--device", default=None, help="torch device (default: the current platform's device type)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N) first (also bounds vLLM's C++ ops, which share torch's "
        "OpenMP pool); 1 gives steadier ratios on a busy host",
    )
    p.set_defaults(func=_cmd_bench, subparser=p)


def _backend_overrides(values: list[str]) -> dict[str, str]:
    from mamba_backends.selector import registered_backend_names, resolve_selected_backend
    from mamba_backends.types import MAMBA_TYPES

    names = registered_backend_names()
    out: dict[str, str] = {}
    for v in values:
        family = {t: f"{v}.{t}" for t in MAMBA_TYPES if f"{v}.{t}" in names}
        if "=" not in v and v not in names and family:
            out.update(family)  # "--backend cpu": cpu.mamba1, cpu.mamba2, ...
            continue
        if "=" in v:
            mamba_type, name = v.split("=", 1)
            if mamba_type not in MAMBA_TYPES:
                raise ValueError(
                    f"--backend {v!r}: unknown mamba type {mamba_type!r}; "
                    f"valid: {', '.join(MAMBA_TYPES)}"
                )
            out[mamba_type] = name
            continue
        try:
            backend = resolve_selected_backend(v)
        except (TypeError, ValueError, ImportError) as e:
            raise ValueError(f"--backend {v!r}: {e}") from e
        if backend.mamba_type not in MAMBA_TYPES:
            raise ValueError(f"--backend {v!r}: it serves none of the mamba types")
        out[backend.mamba_type] = v  # its own type's rows: those are the ops it has
    return out


def _cmd_bench(args: argparse.Namespace) -> int:
    from mamba_backends.platform import get_current_platform
    from mamba_backends.selector import select_mamba_backend

    if args.threads is not None:
        if args.threads < 1:
            sys.stderr.write(f"mamba-backends bench: --threads must be >= 1, got {args.threads}\n")
            return 2
        torch.set_num_threads(args.threads)
    platform = get_current_platform()
    device = args.device or platform.device_type
    try:
        overrides = _backend_overrides(args.backend)
    except ValueError as e:
        sys.stderr.write(f"mamba-backends bench: {e}\n")
        return 2
    try:
        table = table_for(device, args.quick)
    except RuntimeError as e:  # torch.device() rejects the string
        sys.stderr.write(f"mamba-backends bench: --device {device!r}: {e}\n")
        return 2
    specs = select(table, args.ops)
    if not specs:
        sys.stderr.write(f"no benchmark row matches --ops {' '.join(args.ops)}\n")
        return 2
    cfg = BenchConfig(
        repeats=args.repeats if args.repeats is not None else (3 if args.quick else 20),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 3),
        device=device,
        dtype=args.dtype,
    )
    if cfg.repeats < 1 or cfg.warmup < 0:
        sys.stderr.write("mamba-backends bench: --repeats must be >= 1 and --warmup >= 0\n")
        return 2
    backends: dict[str, str] = {}
    short: set[str] = set()

    def ours_for(mamba_type: str, op: str) -> Impl:
        try:
            choice = select_mamba_backend(mamba_type, overrides.get(mamba_type))
        except Exception as e:  # noqa: BLE001 - a row, not a crash
            return Impl("ours", None, unavailable=f"{type(e).__name__}: {e}")
        backend = choice.backend
        backends[mamba_type] = backend.qualname()
        if choice.rule == "default":
            # Only the default map answered: the spec against the baselines is not "ours", and
            # at full shapes takes minutes.
            return Impl(
                backend.get_name(),
                None,
                unavailable=f"the {platform.name} platform serves no {mamba_type} backend (ours "
                "would be the spec); pick one with --backend",
            )
        short.add(backend.get_name())
        return ours_impl(backend, op)

    t0 = time.perf_counter()
    rows = run_bench(specs, cfg, ours_for)
    meta = {
        "platform": platform.name,
        "device": device,
        "device_name": platform.device_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": _py_platform.python_version(),
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "quick": bool(args.quick),
        "backends": backends,
        "wall_s": round(time.perf_counter() - t0, 2),
        "ratio": "ours median / baseline median (lower is better for ours)",
        "gbps": "decode: (touched states read + written, inputs, outputs) bytes / ours median",
        "copy_gbps": "torch copy_ moving the same number of bytes (half read, half written)",
        "tflops": "recurrent-form flop count / ours median (a floor on work, not the kernel's)",
    }
    title = f"{meta['device_name']}, torch {torch.__version__}; ours: " + (
        ", ".join(sorted(short)) or "none (see --backend)"
    )
    sys.stdout.write(f"{title}\n{format_table(rows)}\n")
    json_path = write_json(rows, meta, args.out / "bench.json")
    plot_path = write_plot(rows, args.out / "bench.png", title)
    sys.stdout.write(f"wrote {json_path}" + (f" and {plot_path}" if plot_path else "") + "\n")
    if plot_path is None:
        logger.warning("bench: the plot was skipped (see above)")
    if not ours_measured(rows):
        sys.stderr.write(
            f"mamba-backends bench: none of our ops was measured ({len(rows)} rows; every "
            '"ours" cell is n/a, an error or not implemented: see the note column)\n'
        )
        return 1
    return 0
