"""The CPU package's ``mamba-backends info`` section (entry point ``mamba_backends.info`` ->
``cpu-native``): whether the native C kernels are active, and if not, why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamba_backends.info import InfoSection
from mamba_backends_cpu import native


def _state(lib: dict[str, Any]) -> str:
    """One library's state in a few words."""
    if lib.get("active"):
        return "active"
    reason = str(lib.get("reason") or "inactive")
    if reason == "not built yet" and lib.get("cached"):
        return "built (cached), loads at first use"
    if reason == "not built yet":
        return "not built yet (compiles at first use)"
    return f"{reason}; the PyTorch fallback serves"


def info_section(requested: bool = False) -> InfoSection:
    """``mamba_backends_cpu.native.status()`` as an ``info`` section (cheap: builds nothing)."""
    libs: dict[str, dict[str, Any]] = dict(native.status())
    states = {name: _state(lib) for name, lib in libs.items()}
    bad = [name for name, lib in libs.items() if not lib.get("active") and _is_failure(lib)]
    if bad:
        summary = f"native kernels unavailable for {', '.join(bad)}; the PyTorch fallback serves"
    elif all(state == "active" for state in states.values()):
        summary = "native kernels active"
    else:
        summary = "native kernels available (built or loaded at first use)"
    any_lib = next(iter(libs.values()), {})
    lines = [f"{name:<6} {state}" for name, state in states.items()]
    for key in ("compiler", "march", "openmp"):
        if key in any_lib:
            lines.append(f"{key:<9}: {any_lib[key]}")
    if "cache" in any_lib:
        cache = Path(str(any_lib["cache"]))
        lines.append(f"cache    : {cache.parent if cache.suffix == '.so' else cache}")
    return InfoSection(data={"libraries": libs}, summary=summary, lines=tuple(lines))


def _is_failure(lib: dict[str, Any]) -> bool:
    """Inactive for a reason other than "not built yet" (no compiler, build error, disabled)."""
    return str(lib.get("reason") or "") != "not built yet"
