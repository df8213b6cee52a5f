"""Launch plumbing shared by every Triton op: the tuning device name of a tensor, and configs.

Tuning tables (``mamba_backends.tuning``) are keyed by ``vendor:arch`` device names. A launcher
asks :func:`launch_config` with its op name, the device of its tensors and its shape keys; each
kernel module maps the answer to its block constexprs and Triton launch options (``num_warps``,
``num_stages``) with the same function the compile check uses.

Device names:

- NVIDIA (CUDA torch): ``cuda:sm<major><minor>`` from the compute capability (``cuda:sm90``
  for H100/H200, ``cuda:sm100`` for B200);
- AMD (ROCm torch, ``torch.version.hip``): ``hip:<gcnArch>`` (``hip:gfx942`` for MI300);
- Intel: ``xpu:<arch>`` when torch reports an architecture name, else ``xpu:default``;
- the Triton interpreter (``TRITON_INTERPRET=1``) and CPU tensors: ``default``, or the name in
  ``MAMBA_BACKENDS_TRITON_TUNING_DEVICE`` (e.g. ``hip:gfx942``), so that a vendor's tables can be
  launched and checked against the spec in the interpreter.

A lookup then falls back from the exact name to ``<vendor>:default`` to ``default``.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import torch

from mamba_backends.tuning import lookup
from mamba_backends_triton import interpreting


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


def launch_config(op: str, device: torch.device, **keys: int | str | bool) -> dict[str, Any]:
    """The tuning config of ``op`` for tensors on ``device`` at shape ``keys``."""
    return lookup(op, device_name(device), **keys)
