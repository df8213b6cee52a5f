"""``mamba-backends check``: the quick conformance subset against the current platform.

For every mamba type (or those given with ``--types``) it selects the backend the way serving
does (:func:`mamba_backends.get_mamba_backend`), runs the quick cases of each of its ops, and
prints one row per op: status, cases passed, worst error and worst error/tolerance ratio. An op
that is not implemented is a failure, with the reason. Exit code 0 only if every op passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

import torch

from mamba_backends.selector import get_mamba_backend
from mamba_backends.testing.runner import OpSummary, check_backend
from mamba_backends.types import MAMBA_TYPES

logger = logging.getLogger(__name__)

_COLUMNS = ("type", "backend", "op", "status", "cases", "max|err|", "err/tol", "detail")
_DETAIL_WIDTH = 90


def add_check_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="run the quick conformance subset on this platform")
    p.add_argument(
        "--types",
        default=",".join(MAMBA_TYPES),
        help=f"comma-separated mamba types (default: all of {','.join(MAMBA_TYPES)})",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default=None, help="run on this device (default: backend's own)")
    p.add_argument("--full", action="store_true", help="the whole fixed grid, not the quick one")
    p.set_defaults(func=_cmd_check, subparser=p)


def parse_types(text: str) -> list[str]:
    """``"mamba2, short_conv"`` -> ``["mamba2", "short_conv"]``; unknown names raise."""
    types = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in types if t not in MAMBA_TYPES]
    if bad or not types:
        raise ValueError(f"--types: unknown {bad or text!r}; valid: {', '.join(MAMBA_TYPES)}")
    return types


def run_check(
    types: Sequence[str], *, device: str | None = None, full: bool = False
) -> list[OpSummary]:
    """One row per (type, op) for the backends selected on this platform."""
    from mamba_backends.backend import OP_NAMES

    rows: list[OpSummary] = []
    for t in types:
        try:
            backend = get_mamba_backend(t)
        except Exception as e:  # noqa: BLE001 - a type that cannot select is a table row
            logger.warning("no backend for %s: %s", t, e)
            rows += [
                OpSummary(t, "?", op, "error", detail=f"selecting the backend failed: {e}")
                for op in OP_NAMES[t]
            ]
            continue
        rows += check_backend(backend, quick=not full, device=device)
    return rows


def device_problem(device: str) -> str:
    """Why ``device`` cannot run the check here ("" when it can): not a torch device string,
    a device this torch build or machine lacks, or ``meta`` (nothing to compare)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        return f"not a torch device ({e})"
    if dev.type == "meta":
        return "meta tensors hold no values to compare"
    try:
        torch.zeros(1, device=dev)
    except Exception as e:  # noqa: BLE001 - e.g. AssertionError: Torch not compiled with CUDA
        return f"not usable here ({type(e).__name__}: {e})"
    return ""


def common_failure(rows: Sequence[OpSummary]) -> str:
    """The reason shared by every failing row (when more than one fails), in full; else "".

    A row's detail is ``"<case id>: <message>"`` or a message: the shared reason is the longest
    tail, cut after a ``": "``, that every failing row's detail ends with.
    """
    details = [r.detail for r in rows if not r.ok]
    if len(details) < 2:
        return ""
    first = details[0]
    for cut in (0, *(m.end() for m in re.finditer(": ", first))):
        tail = first[cut:]
        if tail and all(d == tail or d.endswith(": " + tail) for d in details):
            return tail
    return ""


def _fmt_float(x: float, total: int) -> str:
    return f"{x:.2e}" if total else "-"


def format_table(rows: Sequence[OpSummary]) -> str:
    """The rows as an aligned text table."""
    cells = [list(_COLUMNS)]
    for r in rows:
        detail = (
            r.detail if len(r.detail) <= _DETAIL_WIDTH else r.detail[: _DETAIL_WIDTH - 3] + "..."
        )
        cells.append(
            [
                r.mamba_type,
                r.backend,
                r.op,
                r.status,
                f"{r.passed}/{r.total}",
                _fmt_float(r.max_abs_err, r.total),
                f"{r.max_ratio:.3f}" if r.total else "-",
                detail,
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for row in cells:
        head = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
        lines.append(f"{head}  {row[-1]}".rstrip())
    return "\n".join(lines)


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        types = parse_types(args.types)
    except ValueError as e:
        sys.stderr.write(f"mamba-backends check: {e}\n")
        return 2
    if args.device is not None:
        reason = device_problem(args.device)
        if reason:
            sys.stderr.write(f"mamba-backends check: --device {args.device!r}: {reason}\n")
            return 2
    from mamba_backends.platform import get_current_platform

    platform = get_current_platform().name  # PlatformError: the CLI reports it, exit 2
    rows = run_check(types, device=args.device, full=args.full)
    ok = bool(rows) and all(r.ok for r in rows)
    n_bad = sum(not r.ok for r in rows)
    if args.json:
        doc = {
            "platform": platform,
            "subset": "full" if args.full else "quick",
            "ok": ok,
            "results": [r.as_dict() for r in rows],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        subset = "full grid" if args.full else "quick subset"
        sys.stdout.write(f"mamba-backends check: platform {platform}, {subset}\n")
        common = common_failure(rows)
        if common:
            sys.stdout.write(f"every failing op failed the same way: {common}\n")
        sys.stdout.write(format_table(rows) + "\n")
        verdict = "PASS" if ok else f"FAIL ({n_bad} of {len(rows)} ops not passing)"
        sys.stdout.write(f"result: {verdict}\n")
    return 0 if ok else 1
