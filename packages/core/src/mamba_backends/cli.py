"""The ``mamba-backends`` command line (also ``python -m mamba_backends``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from mamba_backends.info import collect_info, format_info


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info(vllm=True if args.vllm else None)
    out = json.dumps(info, indent=2) if args.json else format_info(info)
    sys.stdout.write(out + "\n")
    return 0 if all("error" not in b for b in info["backends"].values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mamba-backends",
        description="Sequence-mixing kernels for hybrid and state-space LLMs, per platform.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="platform, device, packages and backend per mamba type")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_info.add_argument(
        "--vllm",
        action="store_true",
        help="also show which backend the vLLM plugin routes each vLLM mamba layer to "
        "(automatic inside a vLLM process; imports vLLM)",
    )
    p_info.set_defaults(func=_cmd_info)

    # Subcommands that live in their own modules, imported only when run.
    from mamba_backends.bench.cli import add_bench_parser
    from mamba_backends.testing.cli import add_check_parser

    add_check_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
