"""``mamba-backends check``: the quick conformance subset against the current platform."""

from __future__ import annotations

import argparse
from typing import Any


def add_check_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="run the quick conformance subset on this platform")
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    raise NotImplementedError("mamba-backends check lands with the conformance kit")
