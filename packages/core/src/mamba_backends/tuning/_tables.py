"""Reading and validating tuning tables: ``<op>.json`` files from vendor packages and folders.

A table file holds ``{"op": "<op>", "configs": [entry, ...]}``; an entry is
``{"device": str, "when": {key: condition}, "config": {...}, "note": str}`` (``when`` and
``note`` optional). A condition is an exact value (int, str or bool) or an inclusive range
``[min, max]`` whose ``null`` side is unbounded.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamba_backends import _resolve

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

logger = logging.getLogger("mamba_backends.tuning")

#: Entry-point group: name = vendor, value = a package whose folder holds ``<op>.json``.
GROUP = "mamba_backends.tuning"

Bound = int | float | None
Condition = int | str | bool | tuple[Bound, Bound]

_ENTRY_FIELDS = {"device", "when", "config", "note"}
_FILE_FIELDS = {"op", "configs", "note"}


class TuningError(LookupError):
    """A tuning table is malformed or ambiguous, or a lookup matches no entry."""


@dataclass(frozen=True)
class Entry:
    """One validated entry. ``device`` is ``None`` only for :func:`override` entries (any)."""

    device: str | None
    when: tuple[tuple[str, Condition], ...]
    config: dict[str, Any]
    source: str  # where it came from, for errors and debug logs
    note: str = ""
    _flat: bool = field(default=True, repr=False)

    def holds(self, keys: dict[str, Any]) -> bool:
        """Whether every condition of ``when`` holds on ``keys`` (a missing key never holds)."""
        for name, cond in self.when:
            if name not in keys:
                return False
            v = keys[name]
            if isinstance(cond, tuple):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    return False
                lo, hi = cond
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    return False
            elif isinstance(cond, bool) != isinstance(v, bool) or v != cond:
                return False
        return True

    def fresh_config(self) -> dict[str, Any]:
        """A copy of ``config`` the caller may mutate."""
        return dict(self.config) if self._flat else copy.deepcopy(self.config)

    def identity(self) -> tuple[str | None, str]:
        """``(device, when)`` in a canonical form: two entries with it equal are duplicates."""
        return self.device, json.dumps(sorted(self.when), sort_keys=True)

    def describe_when(self) -> str:
        return json.dumps({k: list(c) if isinstance(c, tuple) else c for k, c in self.when})


@dataclass(frozen=True)
class Source:
    """A folder of ``<op>.json`` files: a vendor package's, or one of the env folders."""

    name: str  # e.g. "package 'cpu' (mamba_backends_cpu.tuning)"
    folder: Traversable


@dataclass
class Table:
    """Every entry for one op, in precedence order, and the same entries by device."""

    op: str
    entries: list[Entry]
    sources: list[str]
    by_device: dict[str, list[Entry]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for e in self.entries:
            assert e.device is not None
            self.by_device.setdefault(e.device, []).append(e)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _condition(name: str, raw: Any, where: str) -> Condition:
    if isinstance(raw, (bool, int, str)):
        return raw
    if isinstance(raw, list) and len(raw) == 2 and all(b is None or _is_number(b) for b in raw):
        lo, hi = raw
        if lo is not None and hi is not None and lo > hi:
            raise TuningError(f"{where}: when[{name!r}] range {raw} has min > max")
        return (lo, hi)
    raise TuningError(
        f"{where}: when[{name!r}] = {raw!r} is neither an exact value (int, str, bool) nor "
        "a [min, max] range (numbers or null)"
    )


def parse_entry(raw: Any, where: str, *, any_device: bool = False) -> Entry:
    """Validate one entry (``where`` names the file and index in errors)."""
    if not isinstance(raw, dict):
        raise TuningError(f"{where}: an entry must be an object, got {type(raw).__name__}")
    unknown = set(raw) - _ENTRY_FIELDS
    if unknown:
        raise TuningError(f"{where}: unknown field(s) {sorted(unknown)}; allowed {_ENTRY_FIELDS}")
    device = raw.get("device")
    if not (device is None and any_device) and not (isinstance(device, str) and device.strip()):
        raise TuningError(f"{where}: 'device' must be a non-empty string, got {device!r}")
    when = raw.get("when", {})
    if not isinstance(when, dict) or not all(isinstance(k, str) and k for k in when):
        raise TuningError(f"{where}: 'when' must be an object with string keys, got {when!r}")
    config = raw.get("config")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TuningError(f"{where}: 'config' must be an object with string keys, got {config!r}")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise TuningError(f"{where}: 'note' must be a string, got {note!r}")
    conds = tuple((k, _condition(k, v, where)) for k, v in when.items())
    flat = all(isinstance(v, (int, float, str, bool)) or v is None for v in config.values())
    return Entry(device, conds, dict(config), where, note, flat)


def parse_file(op: str, text: str, where: str) -> list[Entry]:
    """Validate the text of ``<op>.json``; ``where`` names the file in errors."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as e:
        raise TuningError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(data, dict) or set(data) - _FILE_FIELDS or "configs" not in data:
        raise TuningError(f"{where}: expected an object {{'op': {op!r}, 'configs': [...]}}")
    if data.get("op") != op:
        raise TuningError(f"{where}: 'op' is {data.get('op')!r}, but the file name says {op!r}")
    if not isinstance(data["configs"], list):
        raise TuningError(f"{where}: 'configs' must be a list")
    return [parse_entry(raw, f"{where} configs[{i}]") for i, raw in enumerate(data["configs"])]


def package_sources() -> list[Source]:
    """The tuning folders of the installed vendor packages, by entry-point name.

    A package that fails to import is skipped with a warning (as a failing auto-discovered
    plugin is everywhere in core); a malformed table is an error.
    """
    out = []
    for ep in _resolve.entry_points(GROUP):
        pkg = ep.value.strip()
        name = f"package {ep.name!r} ({pkg})"
        try:
            folder = resources.files(pkg)
        except Exception as e:  # noqa: BLE001 - any import failure: skip that vendor's tables
            logger.warning("tuning: skipping %s: import failed: %s: %s", name, type(e).__name__, e)
            continue
        out.append(Source(name, folder))
    return out


def dir_sources(value: str, env_var: str) -> list[Source]:
    """The folders named by ``env_var`` (``os.pathsep``-separated; earlier ones first)."""
    out = []
    for part in value.split(os.pathsep):
        if not part:
            continue
        folder = Path(part).expanduser()
        if not folder.is_dir():
            raise TuningError(f"{env_var}={value!r}: {str(folder)!r} is not a folder")
        out.append(Source(f"{env_var} folder {str(folder)!r}", folder))
    return out


def load_table(op: str, layers: list[list[Source]]) -> Table:
    """Read ``<op>.json`` from every source. Earlier layers take precedence over later ones;
    within a layer, two entries with the same ``(device, when)`` are an error naming both."""
    entries: list[Entry] = []
    used: list[str] = []
    for layer in layers:
        seen: dict[tuple[str | None, str], Entry] = {}
        for src in layer:
            f = src.folder.joinpath(f"{op}.json")
            if not f.is_file():
                continue
            used.append(src.name)
            for e in parse_file(op, f.read_text(encoding="utf-8"), f"{src.name}: {op}.json"):
                prev = seen.get(e.identity())
                if prev is not None:
                    raise TuningError(
                        f"op {op!r}: device {e.device!r} when {e.describe_when()} is defined "
                        f"twice: {prev.source} and {e.source}"
                    )
                seen[e.identity()] = e
                entries.append(e)
    return Table(op, entries, used)


def op_names(layers: list[list[Source]]) -> list[str]:
    """Every op that has a table file in some source."""
    names = set()
    for layer in layers:
        for src in layer:
            if src.folder.is_dir():
                names |= {f.name[:-5] for f in src.folder.iterdir() if f.name.endswith(".json")}
    return sorted(names)
