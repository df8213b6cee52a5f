"""The CPU package's ``mamba-backends info`` section (entry point ``mamba_backends.info`` ->
``cpu-native``): the CPU's ISA level, whether the native C kernels are active (and if not,
why), the ISA level each loaded library was built for, whether the decode ops' torch-op entry
is active, and the path each op takes here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamba_backends.info import InfoSection
from mamba_backends_cpu import native
from mamba_backends_cpu.isa import cpu_isa
from mamba_backends_cpu.native import entry
from mamba_backends_cpu.tuning import cpu_config

#: Each op and the native library that serves it (None: PyTorch only).
OP_LIBRARIES: dict[str, str | None] = {
    "causal_conv1d_fn": "conv",
    "causal_conv1d_update": "conv",
    "selective_scan_fn": "ssm",
    "mamba_chunk_scan_combined_varlen": "ssm",
    "selective_state_update": "ssm",
    "chunk_gated_delta_rule": "gdn",
    "fused_recurrent_gated_delta_rule": "gdn",
    "fused_gdn_gating": "gdn",
    "lightning_attention": None,
    "linear_decode_forward": None,
}
#: PyTorch paths whose bf16 products are a per-ISA tuning choice (``bf16_gemms``).
_BF16_GEMM_OPS = ("chunk_gated_delta_rule", "lightning_attention")


def _products(op: str) -> str:
    """``bf16 products`` or ``fp32 products`` for a bf16 call of ``op`` on this CPU."""
    keys: dict[str, int | str] = {"dtype": "bfloat16"}
    if op == "chunk_gated_delta_rule":
        keys.update(K=128, V=128)
    else:
        keys.update(D=128, E=128, block_size=256)
    try:
        bf16 = bool(cpu_config(op, **keys)["bf16_gemms"])
    except (LookupError, KeyError):
        return "products: no tuning row"
    return "bf16 products" if bf16 else "fp32 products"


def op_paths(libs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The path each op takes for finite inputs: ``native <lib>`` (with the ISA its build
    targets) or ``PyTorch`` (with why, and the bf16-product choice where it is tuned)."""
    paths = {}
    for op, name in OP_LIBRARIES.items():
        lib = libs.get(name or "", {})
        if name is not None and (lib.get("active") or not _is_failure(lib)):
            built = f", {lib['isa']} build" if lib.get("isa") else f", -march={lib.get('march')}"
            path = f"native {name}{built}"
        else:
            path = "PyTorch" if name is None else f"PyTorch ({name}: {_state(lib)})"
        if op in _BF16_GEMM_OPS and path.startswith("PyTorch"):
            path += f"; bf16 inputs: {_products(op)}"
        paths[op] = path
    return paths


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
    isa = cpu_isa()
    lines = [f"isa    : {isa.describe()}"]
    for name, state in states.items():
        built = libs[name].get("isa")  # the ISA level a loaded build reports (mb_isa_level)
        lines.append(f"{name:<6} {state}" + (f", {built} build" if built else ""))
    ent = entry.status()
    if ent["active"]:
        ent_state = "active (decode conv: one torch op to the kernel)"
    elif ent["reason"] == "not built yet":
        ent_state = "built (cached), loads at first use" if ent["cached"] else (
            "not built yet (compiles at first use)")  # fmt: skip
    else:
        ent_state = f"{ent['reason']}; the ctypes path serves"
    lines.append(f"entry  {ent_state}")
    for key in ("compiler", "march", "openmp"):
        if key in any_lib:
            lines.append(f"{key:<9}: {any_lib[key]}")
    if "cache" in any_lib:
        cache = Path(str(any_lib["cache"]))
        lines.append(f"cache    : {cache.parent if cache.suffix == '.so' else cache}")
    paths = op_paths(libs)
    lines.append("paths  :")
    lines += [f"  {op:<34} {path}" for op, path in paths.items()]
    data = {
        "libraries": libs, "entry": ent, "isa": isa.level, "isa_hardware": isa.hw_level,
        "paths": paths,
    }  # fmt: skip
    return InfoSection(data=data, summary=summary, lines=tuple(lines))


def _is_failure(lib: dict[str, Any]) -> bool:
    """Inactive for a reason other than "not built yet" (no compiler, build error, disabled)."""
    return str(lib.get("reason") or "") != "not built yet"
