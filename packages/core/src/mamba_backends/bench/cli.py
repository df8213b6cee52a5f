"""``mamba-backends bench``: side-by-side timings, ours / baseline."""

from __future__ import annotations

import argparse
from typing import Any


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark this platform's ops against baselines")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    raise NotImplementedError("mamba-backends bench lands with the CPU kernels")
