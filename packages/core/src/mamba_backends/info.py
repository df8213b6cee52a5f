"""What ``mamba-backends info`` reports: platform, device, packages, backend per type, and the
sections that installed packages contribute.

Core names no vendor package and no plugin. They reach ``info`` through two mechanisms:

- **packages**: every installed distribution whose name starts with ``mamba-backends``, or
  that registers an entry point in one of the ``mamba_backends.*`` groups, is listed with its
  version (discovered, not listed here);
- **sections**: the entry-point group :data:`INFO_GROUP` (``mamba_backends.info``). The entry
  point's name is the section's name; its value is a callable ``section(requested: bool)`` that
  returns an :class:`InfoSection`, a plain JSON-friendly dict, or None to stay out of this
  report. ``requested`` is True when the user asked for the section by name
  (``info --section NAME``, or its shorthand ``info --NAME``); a section that is expensive to
  compute (one that imports an engine) should do that work only then. The callable must be
  cheap otherwise.

A section that fails (import error, exception, a result of the wrong type) is reported as an
error in that section; it never breaks ``info``.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

from mamba_backends import _resolve
from mamba_backends.platform import get_platform_selection
from mamba_backends.selector import select_mamba_backend
from mamba_backends.types import MAMBA_TYPES

logger = logging.getLogger(__name__)

#: Entry-point group through which installed packages contribute ``info`` sections.
INFO_GROUP = "mamba_backends.info"
#: Distributions whose (normalised) name starts with this are ours.
DIST_PREFIX = "mamba-backends"
#: Entry-point groups whose prefix marks a distribution as part of mamba-backends.
GROUP_PREFIX = "mamba_backends."


@dataclass(frozen=True)
class InfoSection:
    """One contributed ``info`` section.

    Attributes:
        data: the JSON-friendly content (what ``info --json`` shows under the section's name).
        summary: one line shown beside the section's name in the text report.
        lines: the text report's body, one string per line (indented by ``info``); None renders
            ``data`` as ``key: value`` lines.
    """

    data: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    lines: tuple[str, ...] | None = None


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_ours(dist: metadata.Distribution) -> bool:
    name = dist.metadata["Name"] or ""
    if _normalise(name).startswith(DIST_PREFIX):
        return True
    try:
        return any(ep.group.startswith(GROUP_PREFIX) for ep in dist.entry_points)
    except Exception:  # noqa: BLE001 - an unreadable dist-info is not ours to report
        return False


def installed_packages(dists: Iterable[metadata.Distribution] | None = None) -> dict[str, str]:
    """Installed mamba-backends distributions (core, vendors, plugins) and their versions.

    A distribution is ours when its name starts with ``mamba-backends`` or when it registers an
    entry point in a ``mamba_backends.*`` group. The first of duplicate installs on the path
    (the one that imports) wins.
    """
    found: dict[str, str] = {}
    seen: set[str] = set()
    for dist in metadata.distributions() if dists is None else dists:
        name = dist.metadata["Name"]
        if not name or _normalise(name) in seen:
            continue
        seen.add(_normalise(name))
        if _is_ours(dist):
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda kv: _normalise(kv[0])))


def section_names() -> list[str]:
    """Names of the installed ``info`` sections (entry points are read, nothing is imported;
    unreadable metadata gives none rather than breaking the command line)."""
    try:
        return [ep.name for ep in _resolve.entry_points(INFO_GROUP)]
    except Exception:  # collect_sections reports it when asked
        logger.warning(
            "mamba-backends info: cannot read %s entry points", INFO_GROUP, exc_info=True
        )
        return []


def _extras_of(dist_name: str) -> list[str]:
    """The extras that the installed distribution ``dist_name`` declares ([] if not installed)."""
    try:
        return list(metadata.metadata(dist_name).get_all("Provides-Extra") or ())
    except metadata.PackageNotFoundError:
        return []


def missing_section_message(names: Collection[str]) -> str:
    """One line for ``info --NAME`` / ``info --section NAME`` when no installed package
    contributes a section ``NAME``: what is installed, and how to get it.

    When the installed meta package (:data:`DIST_PREFIX`) has an extra of that name, the line
    gives the install command that works from a clone after ``nox -s build`` (the packages are
    not on PyPI).
    """
    installed = ", ".join(section_names()) or "(none)"
    wanted = ", ".join(repr(n) for n in names)
    msg = (
        f"no installed package contributes an info section named {wanted}; "
        f"installed sections: {installed}"
    )
    extras = [n for n in names if n in _extras_of(DIST_PREFIX)]
    if extras:
        return (
            f"{msg}; the {DIST_PREFIX} extra [{','.join(extras)}] provides it: from a clone of "
            f"the repository run `nox -s build`, then `pip install --find-links dist "
            f'"{DIST_PREFIX}[{",".join(extras)}]"` (README, "Install")'
        )
    return f'{msg}; sections come from installed packages (README, "Install")'


def plugin_logger_names(dists: Iterable[metadata.Distribution] | None = None) -> list[str]:
    """Top-level modules of the packages that plug into mamba-backends: those named by an
    entry point in a ``mamba_backends.*`` group, core's own (``mamba_backends``) excepted.
    Nothing is imported."""
    names: set[str] = set()
    for dist in metadata.distributions() if dists is None else dists:
        try:
            eps = list(dist.entry_points)
        except Exception:  # noqa: BLE001 - unreadable metadata: nothing to configure
            continue
        for ep in eps:
            if ep.group.startswith(GROUP_PREFIX):
                names.add(ep.value.split(":")[0].split(".")[0].strip())
    names.discard("mamba_backends")
    names.discard("")
    return sorted(names)


def _call(fn: Callable[..., Any], requested: bool) -> Any:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: pass the documented keyword
        return fn(requested=requested)
    takes_kw = "requested" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    return fn(requested=requested) if takes_kw else fn()


def _section(ep: metadata.EntryPoint, requested: bool) -> dict[str, Any] | None:
    origin = ep.value
    try:
        fn = ep.load()
        if not callable(fn):
            raise TypeError(f"{origin} is {type(fn).__name__}, not a callable")
        result = _call(fn, requested)
        if result is None:
            return None
        if isinstance(result, dict):
            result = InfoSection(data=result)
        if not isinstance(result, InfoSection):
            raise TypeError(
                f"{origin} returned {type(result).__name__}; expected an InfoSection, a dict "
                "or None"
            )
        lines = None if result.lines is None else [str(line) for line in result.lines]
        return {"summary": str(result.summary), "data": dict(result.data), "lines": lines}
    except Exception as e:  # noqa: BLE001 - a broken section is reported, never fatal
        msg = f"{type(e).__name__}: {e}"
        logger.warning("mamba-backends info: section %r (%s) failed: %s", ep.name, origin, msg)
        return {"summary": f"error: {msg}", "data": {}, "lines": None, "error": msg}


def collect_sections(requested: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Every contributed section, by name: ``{"summary", "data", "lines"[, "error"]}``.

    Sections that return None are left out. ``requested`` names the sections the user asked for;
    a requested name that no installed package provides raises ``ValueError`` naming the
    installed ones.
    """
    eps = _resolve.entry_points(INFO_GROUP)
    unknown = sorted(set(requested) - {ep.name for ep in eps})
    if unknown:
        available = ", ".join(ep.name for ep in eps) or "(none)"
        raise ValueError(
            f"no installed package contributes an info section named "
            f"{', '.join(map(repr, unknown))}; installed sections: {available}"
        )
    sections: dict[str, dict[str, Any]] = {}
    for ep in eps:
        if ep.name in sections:  # two packages, one name: the first by entry-point order wins
            continue
        out = _section(ep, ep.name in requested)
        if out is not None:
            sections[ep.name] = out
    return sections


def collect_info(sections: Collection[str] = ()) -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-friendly dict.

    Args:
        sections: contributed sections the user asked for by name (see :data:`INFO_GROUP`);
            the others show what they show unasked.
    """
    sel = get_platform_selection()
    backends: dict[str, Any] = {}
    for mamba_type in MAMBA_TYPES:
        try:
            choice = select_mamba_backend(mamba_type)
        except Exception as e:  # noqa: BLE001 - report it and keep going
            backends[mamba_type] = {"error": f"{type(e).__name__}: {e}"}
            continue
        backends[mamba_type] = {
            "backend": choice.backend.get_name(),
            "class": choice.path,
            "rule": choice.rule,
        }
    return {
        "platform": {**sel.platform.describe(), "rule": sel.rule},
        "platform_candidates": list(sel.candidates),
        "platform_skipped": list(sel.skipped),
        "torch": torch.__version__,
        "packages": installed_packages(),
        "backends": backends,
        "sections": collect_sections(sections),
    }


def _kv_lines(data: dict[str, Any], indent: str = "  ") -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:")
            lines += _kv_lines(value, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def format_section(name: str, section: dict[str, Any]) -> list[str]:
    """Text lines of one collected section."""
    lines = [f"{name:<9}: {section.get('summary', '')}".rstrip()]
    body = section.get("lines")
    if body is None:
        lines += _kv_lines(section.get("data") or {})
    else:
        lines += [f"  {line}" for line in body]
    return lines


def format_info(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`collect_info`."""
    p = info["platform"]
    lines = [
        f"platform : {p['name']}  ({p['rule']})",
        f"device   : {p['device_type']} - {p['device_name']}"
        + ("" if p["available"] else "  [unavailable]"),
        f"torch    : {info['torch']}",
        "packages :",
    ]
    lines += [f"  {name:<24} {ver}" for name, ver in info["packages"].items()]
    if info["platform_skipped"]:
        lines.append("skipped platform plugins:")
        lines += [f"  {s}" for s in info["platform_skipped"]]
    lines.append("backends :")
    lines.append(f"  {'mamba type':<18} {'backend':<28} {'rule':<9} class")
    for mamba_type, b in info["backends"].items():
        if "error" in b:
            lines.append(f"  {mamba_type:<18} ERROR: {b['error']}")
        else:
            lines.append(f"  {mamba_type:<18} {b['backend']:<28} {b['rule']:<9} {b['class']}")
    for name, section in info.get("sections", {}).items():
        lines += format_section(name, section)
    return "\n".join(lines)
