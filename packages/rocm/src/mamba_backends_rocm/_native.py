"""Vendor-native backends: used only when importable and only where they pass their probe.

A vendor-native backend class (e.g. :class:`~mamba_backends_rocm.aiter.backends.AiterGdnBackend`)
has a classmethod ``probe(device) -> str | None``: ``None`` when its vendor ops are importable
and agree with the executable spec on a small case on ``device``, else the reason they are not
used. :func:`native_status` runs it once per (backend, device) and process and remembers the
answer; a platform then picks the vendor-native backend or its Triton fallback.
"""

from __future__ import annotations

import logging
import os
import threading

from mamba_backends._resolve import resolve_qualname

logger = logging.getLogger(__name__)

#: ``0`` turns every vendor-native backend of this package off (the Triton kernels serve).
DISABLE_ENV = "MAMBA_BACKENDS_ROCM_NATIVE"

_lock = threading.Lock()
_status: dict[tuple[str, str], str | None] = {}


def native_disabled() -> bool:
    """Whether :data:`DISABLE_ENV` turns the vendor-native backends off."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "false", "no", "off")


def native_status(path: str, device: str) -> str | None:
    """``None`` when the backend at ``path`` may serve on ``device``, else why not (cached)."""
    if native_disabled():
        return f"disabled by {DISABLE_ENV}=0"
    key = (path, device)
    with _lock:
        if key in _status:
            return _status[key]
    try:
        reason = resolve_qualname(path).probe(device)
    except Exception as e:  # noqa: BLE001 - a probe that breaks means "not used"
        reason = f"probe raised {type(e).__name__}: {e}"
    with _lock:
        _status.setdefault(key, reason)
        reason = _status[key]
    if reason is None:
        logger.info("mamba-backends rocm: vendor-native %s passed its probe on %s", path, device)
    else:
        logger.info(
            "mamba-backends rocm: vendor-native %s not used on %s: %s", path, device, reason
        )
    return reason


def known_status() -> dict[str, str]:
    """Every probe answered so far: ``{"<path> on <device>": "ok" | reason}`` (for ``info``)."""
    with _lock:
        return {f"{p} on {d}": ("ok" if r is None else r) for (p, d), r in _status.items()}


def clear_native_status() -> None:
    """Forget the probe answers (tests; a process that changed its vendor packages)."""
    with _lock:
        _status.clear()
