"""Launch plumbing shared by every Triton op: the tuning device name of a tensor, and configs.

Tuning tables (``mamba_backends.tuning``) are keyed by ``vendor:arch`` device names. A launcher
asks :func:`launch_config` with its op name, the device of its tensors and its shape keys; each
kernel module maps the answer to its block constexprs and Triton launch options (``num_warps``,
``num_stages`` and the vendor options of :mod:`._options`) with the same function the compile
check uses.

Device names:

- NVIDIA (CUDA torch): ``cuda:sm<major><minor>`` from the compute capability (``cuda:sm90``
  for H100/H200, ``cuda:sm100`` for B200);
- AMD (ROCm torch, ``torch.version.hip``): ``hip:<gcnArch>`` (``hip:gfx942`` for MI300);
- Intel: ``xpu:<arch>`` when torch reports an architecture name, else ``xpu:default``;
- the Triton interpreter (``TRITON_INTERPRET=1``) and CPU tensors: ``default``, or the name in
  ``MAMBA_BACKENDS_TRITON_TUNING_DEVICE`` (e.g. ``hip:gfx942``), so that a vendor's tables can be
  launched and checked against the spec in the interpreter.

A lookup then falls back from the exact name to ``<vendor>:default`` to ``default``.

Vendor launch options (``waves_per_eu`` on ``hip:``, ``grf_mode`` on ``xpu:``, see
:data:`._options.VENDOR_OPTIONS`): :func:`launch_config` checks every entry of an op's tables
on its first lookup (and again after the tables may have changed), and the config it returns,
with :func:`._options.check_config`. It then guards the launch by where the tensors live: on
their own vendor's GPU the options stay; under the interpreter or on CPU tensors (where a
vendor's tables are launched through ``MAMBA_BACKENDS_TRITON_TUNING_DEVICE``) they are taken
out, since the interpreter has no backend options (logged once per op at DEBUG); on another
vendor's GPU the launch raises :class:`~mamba_backends.tuning.TuningError`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any

import torch

from mamba_backends.tuning import configs, generation, lookup
from mamba_backends_triton import interpreting
from mamba_backends_triton._options import VENDOR_KEYS, check_config, for_backend

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _accelerator_name(device_type: str, index: int) -> str:
    if device_type == "cuda":
        if torch.version.hip is not None:
            arch = str(torch.cuda.get_device_properties(index).gcnArchName).split(":")[0]
            return f"hip:{arch}"
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda:sm{major}{minor}"
    if device_type == "xpu":
        props = torch.xpu.get_device_properties(index)
        xpu_arch = getattr(props, "architecture", None)
        if isinstance(xpu_arch, str) and xpu_arch:
            return "xpu:" + re.sub(r"[^0-9a-z_]+", "_", xpu_arch.lower())
        return "xpu:default"
    return "default"


#: Under the interpreter (or for CPU tensors), the tuning device name to look tables up by.
TUNING_DEVICE_ENV = "MAMBA_BACKENDS_TRITON_TUNING_DEVICE"


def device_name(device: torch.device) -> str:
    """The tuning device name of ``device`` (see the module docstring)."""
    if interpreting() or device.type == "cpu":
        return os.environ.get(TUNING_DEVICE_ENV) or "default"
    index = device.index if device.index is not None else _current_index(device.type)
    return _accelerator_name(device.type, index)


def _current_index(device_type: str) -> int:
    mod = getattr(torch, device_type, None)
    current = getattr(mod, "current_device", None)
    return int(current()) if callable(current) else 0


def launch_backend(device: torch.device) -> str | None:
    """The device-name prefix of the Triton backend that launches on ``device`` (``"cuda:"``,
    ``"hip:"``, ``"xpu:"``), or ``None`` under the interpreter and for CPU tensors."""
    if interpreting() or device.type == "cpu":
        return None
    if device.type == "cuda":
        return "hip:" if torch.version.hip is not None else "cuda:"
    return device.type + ":"


# op -> the tuning generation at which every entry of its tables passed check_config.
_checked_tables: dict[str, int] = {}
_logged_drops: set[str] = set()


def _check_tables(op: str) -> None:
    gen = generation()
    if _checked_tables.get(op) == gen:
        return
    for entry_device, cfg in configs(op):
        check_config(op, entry_device, cfg)
    _checked_tables[op] = gen


def launch_config(op: str, device: torch.device, **keys: int | str | bool) -> dict[str, Any]:
    """The tuning config of ``op`` for tensors on ``device`` at shape ``keys``, with only the
    vendor launch options that this launch may pass (see the module docstring).

    Raises :class:`~mamba_backends.tuning.TuningError` naming op, device and key for a vendor
    option outside its vendor's entries, with a value not allowed, or bound for another
    vendor's GPU.
    """
    name = device_name(device)
    _check_tables(op)
    cfg = lookup(op, name, **keys)
    if VENDOR_KEYS.isdisjoint(cfg):
        return cfg
    check_config(op, name, cfg)  # overrides are not in the tables: check what was served
    backend = launch_backend(device)
    if backend is None:
        dropped = sorted(VENDOR_KEYS.intersection(cfg))
        if op not in _logged_drops:
            _logged_drops.add(op)
            logger.debug("%s on %s: %s not passed (no backend options here)", op, name, dropped)
        return {k: v for k, v in cfg.items() if k not in VENDOR_KEYS}
    for_backend(op, name, cfg, backend)
    return cfg
