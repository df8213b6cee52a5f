"""What ``mamba-backends info`` reports: platform, device, vendor packages, backend per type."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import torch

from mamba_backends.platform import get_platform_selection
from mamba_backends.selector import select_mamba_backend
from mamba_backends.types import MAMBA_TYPES

#: Distributions that make up mamba-backends (the meta package and its members).
DISTRIBUTIONS = (
    "mamba-backends",
    "mamba-backends-core",
    "mamba-backends-cpu",
    "mamba-backends-triton",
    "mamba-backends-cuda",
    "mamba-backends-rocm",
    "mamba-backends-xpu",
    "mamba-backends-vllm",
)


def installed_packages() -> dict[str, str]:
    """Installed mamba-backends distributions and their versions."""
    found = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def collect_info() -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-friendly dict."""
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
    }


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
    return "\n".join(lines)
