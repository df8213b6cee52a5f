"""Triton launch options of a tuning config: warps, stages and the vendors' own options.

A tuning config (``mamba_backends.tuning``) holds a kernel's block sizes (upper-case keys),
its warp and stage counts (``num_warps``/``num_stages``, or per-kernel names such as
``snap_num_warps``) and, on one vendor's entries only, that vendor's Triton launch options
(:data:`VENDOR_OPTIONS`). Every kernel module turns a config into launch options with
:func:`launch_options`, so the launchers and the compile check pass the same ones.

Triton's JIT rejects an option its active backend does not know (``KeyError: Keyword
argument ... unrecognised``), the AMD compiler ignores unknown ones and the interpreter drops
them, so a vendor option must only ever reach a launch of its own vendor. :func:`check_config`
is the rule: such an option is accepted only in an entry whose ``device`` starts with its
vendor's prefix, and only with an allowed value; anything else raises
:class:`~mamba_backends.tuning.TuningError` naming the op, the device and the key. The core
tuning module stays vendor-neutral: the Triton launch helper (:mod:`._launch`), the compile
check and the vendor packages' table tests apply this rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mamba_backends.tuning import TuningError

#: Device-name prefix -> launch option -> its allowed values (the first one's type is the
#: option's type: ``True`` is not an int here).
#:
#: - ``hip:``: fields of Triton's ``HIPOptions`` (``triton/backends/amd/compiler.py``).
#:   ``waves_per_eu`` becomes LLVM's ``"amdgpu-waves-per-eu"="N,N"``: the register budget of
#:   N waves per SIMD (CDNA runs at most 8; omit the key for no hint, the default 0);
#:   ``matrix_instr_nonkdim`` picks the MFMA tile (0: the compiler's choice, 16 or 32);
#:   ``kpack`` packs dot operands along K (1 or 2; Triton resets it to 1 on gfx950).
#: - ``xpu:``: fields of Intel Triton-XPU's ``XPUOptions`` (intel-xpu-backend-for-triton,
#:   ``third_party/intel/backend/compiler.py``, as read from its sources of late 2025 on):
#:   ``warp_size`` is the sub-group width (16 or 32 work-items; it was ``threads_per_warp``
#:   before intel-xpu-backend-for-triton#5122, Sep 2025) and ``grf_mode`` the register file
#:   per hardware thread (``"default"``, ``"128"``, ``"256"``, ``"512"`` registers, or
#:   ``"auto"`` for the compiler's choice; ``"small"``/``"large"`` before #5430, Nov 2025).
#:   A Triton-XPU older than those renames rejects ``warp_size`` and the numeric modes.
VENDOR_OPTIONS: Mapping[str, Mapping[str, tuple[Any, ...]]] = {
    "hip:": {
        "waves_per_eu": (1, 2, 3, 4, 5, 6, 7, 8),
        "matrix_instr_nonkdim": (0, 16, 32),
        "kpack": (1, 2),
    },
    "xpu:": {
        "warp_size": (16, 32),
        "grf_mode": ("default", "128", "256", "512", "auto"),
    },
}

#: Launch option -> the device-name prefix of its vendor.
VENDOR_OF: Mapping[str, str] = {
    key: prefix for prefix, keys in VENDOR_OPTIONS.items() for key in keys
}

VENDOR_KEYS = frozenset(VENDOR_OF)

#: Device-name prefix -> the vendor's name, in messages.
_VENDOR_NAMES = {"cuda:": "NVIDIA", "hip:": "AMD", "xpu:": "Intel"}


def _vendor(prefix: str) -> str:
    return f"{_VENDOR_NAMES.get(prefix, prefix[:-1])} ({prefix})"


def launch_options(
    cfg: Mapping[str, Any],
    warps: str | None = "num_warps",
    stages: str | None = "num_stages",
) -> dict[str, Any]:
    """The Triton launch options of ``cfg``: ``num_warps`` from the key ``warps`` and
    ``num_stages`` from ``stages`` (``None``: not passed), then every vendor option the
    config holds, under its own name. The vendor options are not checked here: the config
    comes through :func:`check_config` (at lookup and in the compile check)."""
    options: dict[str, Any] = {}
    if warps is not None:
        options["num_warps"] = cfg[warps]
    if stages is not None:
        options["num_stages"] = cfg[stages]
    options.update((k, v) for k, v in cfg.items() if k in VENDOR_OF)
    return options


def check_config(op: str, device: str, cfg: Mapping[str, Any]) -> None:
    """Raise :class:`TuningError` unless every vendor option of ``cfg`` belongs to
    ``device``'s vendor and has an allowed value (``device``: the entry's, or the one a
    lookup was made for)."""
    for key, value in cfg.items():
        prefix = VENDOR_OF.get(key)
        if prefix is None:
            continue
        where = f"tuning op {op!r}, device {device!r}: launch option {key!r}"
        if not device.startswith(prefix):
            raise TuningError(
                f"{where} is an {_vendor(prefix)} option, accepted only in entries whose device "
                f"starts with {prefix!r} (the other backends' Triton would reject or ignore it)"
            )
        allowed = VENDOR_OPTIONS[prefix][key]
        if type(value) is not type(allowed[0]) or value not in allowed:
            raise TuningError(f"{where} = {value!r} is not one of {list(allowed)}")


def for_backend(op: str, device: str, options: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """``options`` for a compile or launch on ``backend`` (a device-name prefix such as
    ``"hip:"``): raises :class:`TuningError` on a vendor option of another vendor."""
    for key in options:
        prefix = VENDOR_OF.get(key)
        if prefix is not None and prefix != backend:
            raise TuningError(
                f"tuning op {op!r}, device {device!r}: launch option {key!r} is an "
                f"{_vendor(prefix)} option and must not reach an {_vendor(backend)} compile or "
                "launch"
            )
    return dict(options)
