"""Helpers shared by the conv1d launchers (argument plumbing only; no kernels here)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Dtypes the kernels load and store (they compute in float32).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: A slot id no real slot has (real slots are >= 0); stands in for a disabled pad/null id.
_NO_SLOT = -1


def check_kernel_dtypes(op: str, **tensors: Tensor | None) -> None:
    """The kernels compute in float32: a float64 argument cannot be honoured."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise NotImplementedError(
                f"{op}: argument '{name}' has dtype {t.dtype}; the Triton kernels take "
                "float32, float16 or bfloat16"
            )


def skip_ids(pad_slot_id: int | None, null_block_id: int | None) -> tuple[int, int]:
    """The pad and null ids as kernel ints (``None`` disables one: it then matches no slot)."""
    pad = _NO_SLOT if pad_slot_id is None else int(pad_slot_id)
    null = _NO_SLOT if null_block_id is None else int(null_block_id)
    return pad, null


def flag_tensor(flags: Tensor | None) -> Tensor | None:
    """A flag vector the kernels can load: bool becomes a uint8 view (no copy)."""
    if flags is not None and flags.dtype == torch.bool:
        return flags.view(torch.uint8)
    return flags
