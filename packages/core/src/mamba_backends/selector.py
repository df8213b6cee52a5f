"""``get_mamba_backend``: choose the backend class for a mamba type, platform first.

The rules, in order (the seed's priority):

1. ``platform``: ``current_platform.get_mamba_backend_cls(mamba_type, selected_backend)``;
2. ``selected``: ``selected_backend``, a dotted path or a registered short name. It must be a
   backend of ``mamba_type``, or list it in ``also_serves`` (the seed's route: a GDN backend
   for ``linear_attention``); another type is a :class:`BackendTypeError` naming both;
3. ``default``: the default map (the reference backends).

Failure policy: a backend the platform chose on its own that fails to import (or serves another
mamba type) falls back to the next rule with one warning; an explicitly selected backend that
fails raises.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Literal

from mamba_backends._resolve import (
    BackendImportError,
    entry_point_path,
    entry_points,
    resolve_qualname,
)
from mamba_backends.backend import MambaBackend
from mamba_backends.platform import get_current_platform
from mamba_backends.types import check_mamba_type

logger = logging.getLogger(__name__)

BACKEND_GROUP = "mamba_backends.backends"

#: The default map: the backend of last resort for each mamba type.
DEFAULT_BACKENDS: dict[str, str] = {
    "mamba1": "mamba_backends.reference.backends.ReferenceMamba1Backend",
    "mamba2": "mamba_backends.reference.backends.ReferenceMamba2Backend",
    "short_conv": "mamba_backends.reference.backends.ReferenceShortConvBackend",
    "linear_attention": "mamba_backends.reference.backends.ReferenceLinearAttentionBackend",
    "gdn": "mamba_backends.reference.backends.ReferenceGDNBackend",
}

Rule = Literal["platform", "selected", "default"]

_extra_names: dict[str, str] = {}
_names_lock = threading.Lock()


@dataclass(frozen=True)
class BackendChoice:
    """A selected backend, the rule that chose it and the path it was resolved from."""

    backend: type[MambaBackend]
    rule: Rule
    path: str


def register_backend_name(name: str, path: str) -> None:
    """Register a short name for a backend class path at run time.

    Vendor packages should prefer the ``mamba_backends.backends`` entry-point group, which is
    read without importing anything.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid backend short name {name!r}")
    with _names_lock:
        _extra_names[name] = path
    clear_backend_cache()


def registered_backend_names() -> dict[str, str]:
    """Short name -> dotted class path, from entry points and run-time registrations."""
    names = {ep.name: entry_point_path(ep) for ep in entry_points(BACKEND_GROUP)}
    with _names_lock:
        names.update(_extra_names)
    return names


def _resolve_backend(path: str, who: str) -> type[MambaBackend]:
    obj = resolve_qualname(path)
    if not (isinstance(obj, type) and issubclass(obj, MambaBackend)):
        raise TypeError(f"{who} {path!r} resolves to {obj!r}, which is not a MambaBackend subclass")
    return obj


class BackendTypeError(ValueError):
    """A backend was chosen for a mamba type that it does not serve."""


def _check_serves(backend: type[MambaBackend], mamba_type: str, who: str) -> None:
    if backend.serves(mamba_type):
        return
    serves = ", ".join(repr(t) for t in (backend.mamba_type, *backend.also_serves))
    raise BackendTypeError(
        f"{who} is a {backend.mamba_type!r} backend ({backend.qualname()}, serves {serves}), "
        f"not a {mamba_type!r} backend"
    )


def resolve_selected_backend(selected_backend: str) -> type[MambaBackend]:
    """The backend class a ``selected_backend`` names (a registered short name or a dotted
    path), without consulting the platform or checking its mamba type.

    Raises:
        ValueError: neither a dotted path nor a registered name.
        TypeError: it resolves to something that is not a :class:`MambaBackend` subclass.
        BackendImportError: the path will not import.
    """
    return _resolve_backend(_selected_path(selected_backend), "selected_backend")


def _selected_path(selected_backend: str) -> str:
    names = registered_backend_names()
    if selected_backend in names:
        return names[selected_backend]
    if "." in selected_backend or ":" in selected_backend:
        return selected_backend.replace(":", ".")
    raise ValueError(
        f"selected_backend {selected_backend!r} is neither a dotted path nor a registered "
        f"backend name; registered names: {', '.join(sorted(names)) or '(none)'}"
    )


@functools.cache
def _cached_select(mamba_type: str, selected_backend: str | None) -> BackendChoice:
    platform = get_current_platform()
    path = platform.get_mamba_backend_cls(mamba_type, selected_backend)
    if path is not None:
        try:
            backend = _resolve_backend(path, "platform backend")
            _check_serves(backend, mamba_type, f"platform backend {path!r}")
            return BackendChoice(backend, "platform", path)
        except (BackendImportError, TypeError, BackendTypeError) as e:
            msg = (
                f"mamba-backends: platform {platform.name!r} chose {path!r} for {mamba_type!r} "
                f"but it cannot be used ({e}); falling back"
            )
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    if selected_backend is not None:
        path = _selected_path(selected_backend)
        backend = _resolve_backend(path, "selected_backend")
        _check_serves(backend, mamba_type, f"selected_backend {selected_backend!r}")
        return BackendChoice(backend, "selected", path)
    path = DEFAULT_BACKENDS[mamba_type]
    return BackendChoice(_resolve_backend(path, "default backend"), "default", path)


_select_lock = threading.Lock()


def select_mamba_backend(mamba_type: str, selected_backend: str | None = None) -> BackendChoice:
    """Like :func:`get_mamba_backend`, but also says which rule chose the backend.

    Raises:
        ValueError: ``mamba_type`` is unknown (the valid ones are named), or
            ``selected_backend`` is neither a dotted path nor a registered name.
        BackendTypeError: (a ``ValueError``) ``selected_backend`` is a backend of another
            mamba type that does not list ``mamba_type`` in its ``also_serves``; both types
            are named.
        TypeError: ``selected_backend`` is not a string or None, or resolves to something that
            is not a :class:`MambaBackend` subclass.
        BackendImportError: an explicitly selected path will not import (path and cause named).
    """
    check_mamba_type(mamba_type)
    if selected_backend is not None and not isinstance(selected_backend, str):
        raise TypeError(
            "selected_backend must be a dotted path string, a registered backend name or None; "
            f"got {type(selected_backend).__name__}"
        )
    with _select_lock:  # one resolution per key, even under concurrent first calls
        return _cached_select(mamba_type, selected_backend)


def get_mamba_backend(mamba_type: str, selected_backend: str | None = None) -> type[MambaBackend]:
    """The backend class for ``mamba_type`` (cached). See the module docstring for the rules."""
    return select_mamba_backend(mamba_type, selected_backend).backend


def clear_backend_cache() -> None:
    """Forget every cached selection and every backend's cached ops (tests, plugin reloads,
    platform switches: :func:`~mamba_backends.platform.reset_current_platform` calls it)."""
    _cached_select.cache_clear()
    MambaBackend.clear_ops_cache()
