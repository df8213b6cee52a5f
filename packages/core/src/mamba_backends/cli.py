"""The ``mamba-backends`` command line (also ``python -m mamba_backends``)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence

from mamba_backends.info import (
    collect_info,
    format_info,
    missing_section_message,
    plugin_logger_names,
    section_names,
)
from mamba_backends.platform import PlatformError


def _cmd_info(args: argparse.Namespace) -> int:
    requested = set(args.section or ())
    requested |= {name for name in args.section_flags if getattr(args, f"section_{name}", False)}
    missing = sorted(requested - set(section_names()))
    if missing:
        sys.stderr.write(f"mamba-backends info: {missing_section_message(missing)}\n")
        return 2
    info = collect_info(sections=requested)
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
    p_info.set_defaults(func=_cmd_info, section_flags=tuple(flags), subparser=p_info)


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


#: Section names that ``info --NAME`` may stand for (the shorthand's pattern).
_FLAG_NAME = re.compile(r"--([a-z][a-z0-9-]*)")


def _unknown_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]
) -> int:
    """Report arguments no parser took, with the subcommand's own usage; exit code 2."""
    if args.command == "info":
        wanted = [m.group(1) for a in extra if (m := _FLAG_NAME.fullmatch(a))]
        if wanted and len(wanted) == len(extra):  # info --vllm with no such section installed
            sys.stderr.write(
                f"mamba-backends info: unrecognized arguments {' '.join(extra)}: "
                f"{missing_section_message(wanted)}\n"
            )
            return 2
    sub: argparse.ArgumentParser = getattr(args, "subparser", parser)
    sub.print_usage(sys.stderr)
    sys.stderr.write(f"{sub.prog}: error: unrecognized arguments: {' '.join(extra)}\n")
    return 2


class _Formatter(logging.Formatter):
    """``LEVEL name: message``; the name is left out when the message already starts with
    its package's name (``mamba_backends_cpu: building native kernels ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        top = record.name.split(".")[0]
        if text.startswith((top, top.replace("_", "-"))):
            return f"{record.levelname}: {text}"
        return f"{record.levelname} {record.name}: {text}"


def configure_logging(verbose: bool) -> None:
    """Warnings of every library on stderr; with ``verbose``, INFO of everything.

    Without ``verbose``, the packages that plug into mamba-backends (those that register entry
    points in its groups, found by :func:`~mamba_backends.info.plugin_logger_names`) also show
    INFO: that is where they say what they do once, such as a kernel build on first use.
    Core's own INFO lines (one per test case, one per benchmark row) stay quiet.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if not verbose:
        for name in plugin_logger_names():
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2: bad arguments or environment)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    configure_logging(args.verbose)
    if extra:
        return _unknown_arguments(parser, args, extra)
    try:
        return int(args.func(args))
    except PlatformError as e:  # e.g. MAMBA_BACKENDS_PLATFORM names no installed platform
        sys.stderr.write(f"mamba-backends {args.command}: {e}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
