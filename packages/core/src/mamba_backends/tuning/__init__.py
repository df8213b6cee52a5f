"""Tuning as data: block sizes, warps, thresholds per (op, device, shape keys), from JSON.

Public API::

    from mamba_backends.tuning import lookup, configs, clear_tuning_cache, TuningError
    cfg = lookup("chunk_gated_delta_rule", "cpu", dtype="bfloat16", K=128, V=128)
    cfg = lookup("ssd_chunk_scan", "cuda:sm90", headdim=64, dstate=128)

Devices are ``vendor:arch`` names (``"cpu"``, ``"cuda:sm90"``, ``"hip:gfx942"``, ...). A lookup
searches the exact device, then ``"<vendor>:default"``, then ``"default"``; within a device the
first entry whose ``when`` conditions all hold on the keys wins, and a fresh copy of its
``config`` is returned. No match raises :class:`TuningError`.

Where the entries come from, highest precedence first:

1. :func:`override` contexts (innermost first): trying a config in code or a test;
2. the folders in ``MAMBA_BACKENDS_TUNING_DIR`` (``os.pathsep``-separated): trying configs
   without editing installed files;
3. the vendor packages' ``<op>.json`` files, found through the entry-point group
   ``mamba_backends.tuning`` (name = vendor, value = the package holding the files), in
   entry-point name order. Two packages defining the same ``(op, device, when)`` is an error.

Files are read and validated on the first lookup of their op and cached, and so is the
entry each ``(op, device, keys)`` resolves to: a repeated lookup (every kernel call does one)
is one dict probe plus the copy of a flat config. :func:`clear_tuning_cache` and every
:func:`override` enter/exit forget the resolved entries (:func:`generation` counts those
events, for callers that memoise on top), and a change of ``MAMBA_BACKENDS_TUNING_DIR`` is
noticed by the next lookup.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mamba_backends._env import getenv
from mamba_backends.tuning._tables import (
    GROUP,
    Entry,
    Source,
    Table,
    TuningError,
    dir_sources,
    load_table,
    op_names,
    package_sources,
    parse_entry,
)

__all__ = [
    "ENV_DIR",
    "GROUP",
    "TuningError",
    "clear_tuning_cache",
    "configs",
    "generation",
    "lookup",
    "ops",
    "override",
]

logger = logging.getLogger(__name__)

#: Environment variable: folder(s) of ``<op>.json`` files that take precedence over packages.
ENV_DIR = "MAMBA_BACKENDS_TUNING_DIR"

_lock = threading.RLock()
_tables: dict[str, Table] = {}
_tables_env: str | None = None  # the ENV_DIR value the cached tables were read under
_packages: list[Source] | None = None
_overrides: tuple[tuple[str, Entry], ...] = ()  # (op, entry), innermost last
# (op, device, sorted keys) -> the entry that wins; valid for _resolved_env/_generation only
_resolved: dict[tuple[Any, ...], Entry] = {}
_resolved_env: str | None = None
_generation = 0


def generation() -> int:
    """A counter bumped whenever a lookup may answer differently: :func:`clear_tuning_cache`,
    :func:`override` enter/exit, a new ``MAMBA_BACKENDS_TUNING_DIR``. Memoise on
    ``(generation(), ...)`` to stay correct."""
    _sync_env(getenv(ENV_DIR) or None)
    return _generation


def _invalidate() -> None:
    """Forget resolved entries (caller holds ``_lock``)."""
    global _generation
    _resolved.clear()
    _generation += 1


def _sync_env(env: str | None) -> None:
    global _resolved_env
    if env != _resolved_env:
        with _lock:
            if env != _resolved_env:
                _invalidate()
                _resolved_env = env


def clear_tuning_cache() -> None:
    """Forget every table read so far (the next lookup reads the files again).

    Active :func:`override` contexts stay in force.
    """
    global _packages
    with _lock:
        _tables.clear()
        _packages = None
        _invalidate()


def _layers(env: str | None) -> list[list[Source]]:
    global _packages
    if _packages is None:
        _packages = package_sources()
    return [dir_sources(env, ENV_DIR) if env else [], _packages]


def _table(op: str) -> Table:
    global _tables_env
    env = os.environ.get(ENV_DIR) or None
    table = _tables.get(op)
    if table is not None and env == _tables_env:
        return table
    with _lock:
        if env != _tables_env:
            _tables.clear()
            _tables_env = env
        table = _tables.get(op)
        if table is None:
            table = _tables[op] = load_table(op, _layers(env))
        return table


@functools.lru_cache(maxsize=256)
def _search_order(device: str) -> tuple[str, ...]:
    vendor = device.partition(":")[0]
    order = [device, f"{vendor}:default", "default"]
    return tuple(dict.fromkeys(d for d in order if d != "default:default"))


def _chosen(op: str, device: str, keys: dict[str, Any], e: Entry) -> dict[str, Any]:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "tuning %s on %s %s: %s (device %r, when %s) -> %s",
            op, device, keys, e.source, e.device, e.describe_when(), e.config,
        )  # fmt: skip
    return e.fresh_config()


def lookup(op: str, device: str, **keys: int | str | bool) -> dict[str, Any]:
    """The config for ``op`` on ``device`` (``vendor:arch``) at the shape ``keys``.

    Returns a fresh ``dict`` (the caller may change it). Raises :class:`TuningError` (a
    ``LookupError``) naming op, device and keys when no entry matches, or when a table that
    had to be read is malformed.
    """
    _sync_env(os.environ.get(ENV_DIR) or None)
    gen = _generation
    # The value's type is part of the key: True == 1 for a dict, not for a ``when`` condition.
    memo: tuple[Any, ...] | None = (op, device, *((k, type(v), v) for k, v in sorted(keys.items())))
    try:
        hit = _resolved.get(memo)  # type: ignore[arg-type]
    except TypeError:  # an unhashable key value: resolve without the memo
        memo, hit = None, None
    if hit is not None:
        return _chosen(op, device, keys, hit)
    e = _resolve(op, device, keys)
    if memo is not None:
        with _lock:
            if gen == _generation:  # nothing changed while resolving
                _resolved[memo] = e
    return _chosen(op, device, keys, e)


def _resolve(op: str, device: str, keys: dict[str, Any]) -> Entry:
    order = _search_order(device)
    for ov_op, e in reversed(_overrides):
        if ov_op == op and (e.device is None or e.device in order) and e.holds(keys):
            return e
    table = _table(op)
    for dev in order:
        for e in table.by_device.get(dev, ()):
            if e.holds(keys):
                return e
    where = ", ".join(table.sources) or "no table file for this op in any source"
    raise TuningError(
        f"no tuning entry for op {op!r} on device {device!r} with keys {keys}: searched "
        f"devices {list(order)} in {where}"
    )


def configs(op: str, device_prefix: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every ``(device, config)`` of the tables for ``op``, in precedence order.

    ``device_prefix`` (e.g. ``"cuda:"``, ``"hip:"``) keeps only the devices that start with
    it; note that ``"default"`` entries, which also serve those devices, then drop out. For
    compile checks that prove every shipped config builds. :func:`override` entries are not
    listed; ``MAMBA_BACKENDS_TUNING_DIR`` entries are. An op without tables gives ``[]``.
    """
    return [
        (e.device, e.fresh_config())
        for e in _table(op).entries
        if e.device is not None and (device_prefix is None or e.device.startswith(device_prefix))
    ]


def ops() -> list[str]:
    """Every op that has a table file (in the packages or ``MAMBA_BACKENDS_TUNING_DIR``)."""
    with _lock:
        return op_names(_layers(os.environ.get(ENV_DIR) or None))


@contextmanager
def override(
    op: str,
    config: dict[str, Any],
    *,
    device: str | None = None,
    when: dict[str, Any] | None = None,
) -> Iterator[None]:
    """Within the ``with`` block, lookups of ``op`` get ``config`` (highest precedence).

    ``device=None`` applies to every device; otherwise the override serves the lookups whose
    search order contains ``device`` (``"cuda:default"`` serves every ``cuda:*``). ``when``
    restricts it to matching keys, with the table conditions. ``config`` replaces the table's
    whole config (merge it yourself: ``{**lookup(op, dev, **keys), "num_warps": 8}``).
    Overrides are process-global (not per thread). Example::

        with override("chunk_gated_delta_rule", {"chunk_size": 64, "bf16_gemms": False}):
            ...
    """
    global _overrides
    raw = {"device": device, "when": when or {}, "config": config}
    entry = parse_entry(raw, f"override({op!r}, device={device!r})", any_device=True)
    item = (op, entry)
    with _lock:
        _overrides = (*_overrides, item)
        _invalidate()
    try:
        yield
    finally:
        with _lock:
            _overrides = tuple(o for o in _overrides if o is not item)
            _invalidate()
