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
import sys
from collections.abc import Sequence
from typing import Any

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
    p.set_defaults(func=_cmd_check)


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
    rows = run_check(types, device=args.device, full=args.full)
    ok = bool(rows) and all(r.ok for r in rows)
    n_bad = sum(not r.ok for r in rows)
    from mamba_backends.platform import get_current_platform

    try:
        platform = get_current_platform().name
    except Exception as e:  # noqa: BLE001 - the table is still useful without a name
        platform = f"unknown ({e})"
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
        sys.stdout.write(format_table(rows) + "\n")
        verdict = "PASS" if ok else f"FAIL ({n_bad} of {len(rows)} ops not passing)"
        sys.stdout.write(f"result: {verdict}\n")
    return 0 if ok else 1
