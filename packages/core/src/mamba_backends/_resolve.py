"""Resolve objects by dotted path, and read entry points, without import side effects."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any


class BackendImportError(ImportError):
    """A dotted path that was asked for could not be imported or found."""


def resolve_qualname(path: str) -> Any:
    """Import ``pkg.module.Attr`` (or ``pkg.module:Attr``) and return the attribute.

    Raises:
        BackendImportError: naming ``path`` and the underlying cause.
    """
    if not isinstance(path, str) or not path:
        raise TypeError(f"expected a dotted path string, got {path!r}")
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise BackendImportError(
            f"{path!r} is not a dotted path of the form 'package.module.Attribute'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise BackendImportError(
            f"cannot import {path!r}: importing module {module_name!r} failed with "
            f"{type(e).__name__}: {e}"
        ) from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise BackendImportError(
                f"cannot import {path!r}: module {module_name!r} has no attribute {attr!r}"
            ) from e
    return obj


def entry_point_path(ep: metadata.EntryPoint) -> str:
    """The dotted path an entry point names, as ``pkg.module.Attr`` (nothing is imported)."""
    return ep.value.replace(":", ".").strip()


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """All entry points of ``group``, sorted by name (stable across installs)."""
    return sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)
