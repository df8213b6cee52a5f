"""What ``mamba-backends info`` reports: platform, device, vendor packages, backend per type."""

from __future__ import annotations

import sys
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


def vllm_routing() -> dict[str, Any] | None:
    """The vLLM plugin's routing table (which backend serves each vLLM mamba layer type).

    None when the plugin is not installed. Inside a vLLM process this is what the plugin did;
    elsewhere it is the plan it would follow (this imports vLLM).
    """
    try:
        from mamba_backends_vllm import routing_table  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        return dict(routing_table())
    except Exception as e:  # noqa: BLE001 - report it and keep going
        return {"summary": f"error: {type(e).__name__}: {e}", "layers": {}}


def collect_info(vllm: bool | None = None) -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-friendly dict.

    Args:
        vllm: include the vLLM plugin's routing table; by default only when vLLM is already
            imported in this process (``info`` run inside a vLLM process).
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
    if vllm is None:
        vllm = "vllm" in sys.modules
    info: dict[str, Any] = {
        "platform": {**sel.platform.describe(), "rule": sel.rule},
        "platform_candidates": list(sel.candidates),
        "platform_skipped": list(sel.skipped),
        "torch": torch.__version__,
        "packages": installed_packages(),
        "backends": backends,
    }
    if vllm:
        info["vllm"] = vllm_routing()
    return info


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
    if "vllm" in info:
        routing = info["vllm"]
        if routing is None:
            lines.append("vllm     : plugin not installed (pip install 'mamba-backends[vllm]')")
        else:
            lines.append(
                f"vllm     : plugin {routing.get('summary', '?')}  ({routing.get('source', '')})"
            )
            for layer_type, r in routing.get("layers", {}).items():
                served = r.get("backend") or "-"
                lines.append(
                    f"  {layer_type:<18} {r.get('layer_class', ''):<16} {r.get('status', ''):<8} "
                    f"{served:<22} {r.get('rule') or ''} {r.get('reason') or ''}".rstrip()
                )
    return "\n".join(lines)
