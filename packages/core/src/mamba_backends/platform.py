"""Platforms and their discovery through the ``mamba_backends.platforms`` entry-point group.

A vendor package registers a cheap function that returns its platform class's dotted path, or
None when its hardware is absent. Exactly one platform is current:

1. ``MAMBA_BACKENDS_PLATFORM=<name>`` wins (``reference`` names the built-in fallback);
2. otherwise an accelerator platform wins over a CPU one; two accelerators are an error;
3. otherwise a CPU platform; otherwise the built-in :class:`ReferencePlatform`.

Failure policy: a plugin that fails while being auto-selected is skipped with one warning; a
plugin that was explicitly requested and fails raises :class:`PlatformError`.
Nothing is discovered by import side effect: resolution happens on first use.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

from mamba_backends._resolve import entry_points, resolve_qualname

logger = logging.getLogger(__name__)

PLATFORM_GROUP = "mamba_backends.platforms"
PLATFORM_ENV = "MAMBA_BACKENDS_PLATFORM"


class PlatformError(RuntimeError):
    """No platform, or more than one, can be made current."""


class Platform:
    """Base class of every platform.

    A platform answers which backend serves each mamba type on its hardware
    (:meth:`get_mamba_backend_cls`) and gives device facts.
    """

    #: Short name, equal to the entry-point name that registers it (``cpu``, ``cuda``, ...).
    name: ClassVar[str] = "unspecified"
    #: The ``torch.device`` type its tensors live on.
    device_type: ClassVar[str] = "cpu"
    #: True for GPUs and other accelerators: they win over the CPU platform.
    is_accelerator: ClassVar[bool] = False

    def get_mamba_backend_cls(self, mamba_type: str, selected_backend: str | None) -> str | None:
        """Dotted path of the backend class for ``mamba_type``, or None to defer.

        Returning None lets the selector use ``selected_backend`` or the default map.
        """
        return None

    def is_available(self) -> bool:
        """Whether the platform's device can be used in this process."""
        return True

    def device_name(self) -> str:
        """A human-readable name of the device (CPU model, GPU name)."""
        return self.device_type

    def describe(self) -> dict[str, Any]:
        """JSON-friendly device facts for ``mamba-backends info``."""
        return {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "device_type": self.device_type,
            "device_name": self.device_name(),
            "is_accelerator": self.is_accelerator,
            "available": self.is_available(),
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class ReferencePlatform(Platform):
    """The built-in fallback when no vendor package claims the machine: defers everything."""

    name = "reference"
    device_type = "cpu"


@dataclass(frozen=True)
class PlatformSelection:
    """The current platform and the rule that chose it."""

    platform: Platform
    rule: str
    #: Names of the plugins that claimed the machine.
    candidates: tuple[str, ...] = ()
    #: Plugins that were skipped, with the reason.
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _load_platform(ep: metadata.EntryPoint) -> type[Platform] | None:
    """Call the plugin's probe and resolve its class; None when its hardware is absent."""
    probe = ep.load()
    path = probe() if callable(probe) else probe
    if path is None:
        return None
    if not isinstance(path, str):
        raise PlatformError(
            f"platform plugin {ep.name!r} ({ep.value}) returned {path!r}, "
            "expected a dotted class path or None"
        )
    cls = resolve_qualname(path)
    if not (isinstance(cls, type) and issubclass(cls, Platform)):
        raise PlatformError(f"platform plugin {ep.name!r}: {path!r} is not a Platform subclass")
    return cls


def discover_platform(eps: Iterable[metadata.EntryPoint] | None = None) -> PlatformSelection:
    """Choose the current platform from the installed plugins (see the module docstring)."""
    plugins = list(entry_points(PLATFORM_GROUP) if eps is None else eps)
    names = sorted({ep.name for ep in plugins} | {ReferencePlatform.name})
    requested = os.environ.get(PLATFORM_ENV, "").strip()
    if requested:
        if requested == ReferencePlatform.name:
            return PlatformSelection(ReferencePlatform(), f"explicit: {PLATFORM_ENV}={requested}")
        matches = [ep for ep in plugins if ep.name == requested]
        if not matches:
            raise PlatformError(
                f"{PLATFORM_ENV}={requested!r} names no installed platform; "
                f"installed platforms: {', '.join(names)}"
            )
        try:
            cls = _load_platform(matches[0])
        except Exception as e:
            raise PlatformError(
                f"platform {requested!r} was requested by {PLATFORM_ENV} but failed to load: "
                f"{type(e).__name__}: {e}"
            ) from e
        if cls is None:
            raise PlatformError(
                f"platform {requested!r} was requested by {PLATFORM_ENV} but reports that "
                "its hardware is absent"
            )
        return PlatformSelection(cls(), f"explicit: {PLATFORM_ENV}={requested}", (requested,))

    claimed: list[tuple[str, type[Platform]]] = []
    skipped: list[str] = []
    for ep in plugins:
        try:
            cls = _load_platform(ep)
        except Exception as e:  # noqa: BLE001 - fall back with one warning
            reason = f"{type(e).__name__}: {e}"
            skipped.append(f"{ep.name}: {reason}")
            msg = (
                f"mamba-backends: platform plugin {ep.name!r} failed to load and is skipped "
                f"({reason})"
            )
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            continue
        if cls is not None:
            claimed.append((ep.name, cls))
    candidates = tuple(name for name, _ in claimed)
    accelerators = [(n, c) for n, c in claimed if c.is_accelerator]
    if len(accelerators) > 1:
        raise PlatformError(
            "more than one accelerator platform claims this machine: "
            + " and ".join(f"{n!r} ({c.__module__}.{c.__qualname__})" for n, c in accelerators)
            + f"; choose one with {PLATFORM_ENV}=<name>"
        )
    if accelerators:
        name, cls = accelerators[0]
        return PlatformSelection(cls(), f"auto: accelerator {name!r}", candidates, tuple(skipped))
    if claimed:
        # Several CPU-class plugins: prefer the one named "cpu", then the first by name.
        name, cls = next(((n, c) for n, c in claimed if n == "cpu"), claimed[0])
        return PlatformSelection(cls(), f"auto: cpu platform {name!r}", candidates, tuple(skipped))
    return PlatformSelection(
        ReferencePlatform(), "fallback: no platform plugin claims this machine", (), tuple(skipped)
    )


_lock = threading.Lock()
_selection: PlatformSelection | None = None


def get_platform_selection() -> PlatformSelection:
    """The current platform selection, resolved once (thread-safe) on first use."""
    global _selection
    sel = _selection
    if sel is None:
        with _lock:
            sel = _selection
            if sel is None:
                sel = discover_platform()
                logger.info("mamba-backends platform: %s (%s)", sel.platform.name, sel.rule)
                _selection = sel
    return sel


def get_current_platform() -> Platform:
    """The current platform (resolved lazily)."""
    return get_platform_selection().platform


def reset_current_platform() -> None:
    """Forget the current platform so that the next use discovers it again.

    The backend selection cache and the backends' ops cache are cleared too: they hold the
    previous platform's choices.
    """
    global _selection
    with _lock:
        _selection = None
    # Imported here: the selector imports this module.
    from mamba_backends.selector import clear_backend_cache

    clear_backend_cache()


def __getattr__(name: str) -> Any:
    if name == "current_platform":
        return get_current_platform()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
