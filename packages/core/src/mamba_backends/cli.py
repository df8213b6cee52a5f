"""The ``mamba-backends`` command line (also ``python -m mamba_backends``)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence

from mamba_backends.info import collect_info, format_info, section_names


def _cmd_info(args: argparse.Namespace) -> int:
    requested = set(args.section or ())
    requested |= {name for name in args.section_flags if getattr(args, f"section_{name}", False)}
    try:
        info = collect_info(sections=requested)
    except ValueError as e:  # an unknown section name
        sys.stderr.write(f"mamba-backends info: {e}\n")
        return 2
    out = json.dumps(info, indent=2) if args.json else format_info(info)
    sys.stdout.write(out + "\n")
    ok = all("error" not in b for b in info["backends"].values())
    ok = ok and all("error" not in info["sections"].get(name, {}) for name in requested)
    return 0 if ok else 1


def _add_info_parser(sub: argparse._SubParsersAction) -> None:
    p_info = sub.add_parser(
        "info",
        help="platform, device, packages, backend per mamba type, and the installed packages' "
        "own sections",
    )
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    names = section_names()
    p_info.add_argument(
        "--section",
        action="append",
        metavar="NAME",
        help="also compute this contributed section in full (it may be slow, e.g. import an "
        f"engine); installed: {', '.join(names) or '(none)'}",
    )
    flags = []
    for name in names:  # --NAME as a shorthand of --section NAME, e.g. --vllm
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name) or name in ("json", "section", "help"):
            continue
        if name in flags:
            continue
        flags.append(name)
        p_info.add_argument(
            f"--{name}",
            dest=f"section_{name}",
            action="store_true",
            help=f"same as --section {name}",
        )
    p_info.set_defaults(func=_cmd_info, section_flags=tuple(flags))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mamba-backends",
        description="Sequence-mixing kernels for hybrid and state-space LLMs, per platform.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info_parser(sub)

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
