"""Fused C kernel for causal depthwise conv1d (source in ``_native_conv_src``), via ctypes.

One kernel serves prefill (``causal_conv1d_fn``) and decode (``causal_conv1d_update``): it
reads ``x``, the weights and the conv states in place through their strides (fp32 / bf16 /
fp16, fp32 math), vectorises over channels (unit stride in channel-last ``x`` and in vLLM's
``(W-1, dim)`` state pages) and runs channel blocks and sequence chunks on OpenMP threads.
Built on first use through :func:`mamba_backends_cpu.ops._native.load_library`; when that
returns None (``MAMBA_BACKENDS_CPU_NATIVE=0``, no compiler) :func:`lib` is None and
:mod:`.conv1d` keeps its PyTorch paths.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from mamba_backends_cpu.ops._native import load_library
from mamba_backends_cpu.ops._native_conv_src import SOURCE

#: The widest kernel the C source holds (``KMAX + 1``).
MAX_WIDTH = 4

DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_INDEX = (torch.int32, torch.int64)
_PRM = ctypes.c_int64 * 33


def _signatures() -> dict[str, list[Any]]:
    vp = ctypes.c_void_p
    return {"mb_conv": [vp] * 9 + [ctypes.c_int]}


def lib() -> ctypes.CDLL | None:
    """The conv library, or None when native kernels are disabled or unbuildable."""
    return load_library("conv", SOURCE, _signatures())


def supported(*tensors: Tensor | None) -> bool:
    """Whether every given tensor is a CPU tensor of a dtype the kernel reads."""
    return all(t is None or (t.dtype in DTYPE_CODE and t.device.type == "cpu") for t in tensors)


def _index(t: Tensor) -> Tensor:
    """A 1-D int32/int64 index tensor the kernel can read (stride given separately)."""
    if t.dtype not in _INDEX:
        t = t.to(torch.int64)
    return t


def conv(
    cdll: ctypes.CDLL,
    x: Tensor,
    x_strides: tuple[int, int, int],
    y: Tensor,
    y_strides: tuple[int, int, int],
    weight: Tensor,
    bias: Tensor | None,
    states: Tensor,
    B: int,
    L: int,
    qsl: Tensor | None,
    slots: Tensor | None,
    has_init: Tensor | None,
    init_mode: int,
    silu: bool,
    pad_slot_id: int | None,
    null_block_id: int | None,
    zero_skipped: bool,
    split: bool,
    mode: int,
) -> None:
    """Run the kernel (see the C source for the exact contract).

    Args:
        x: inputs; channel ``c`` of token ``t`` of request ``b`` at element
            ``b*x_strides[0] + (qsl[b] + t)*x_strides[1] + c*x_strides[2]`` (``qsl[b]`` = 0
            without ``qsl``, then every request has ``L`` tokens).
        y: outputs, addressed the same way with ``y_strides`` (may be ``x``).
        weight: ``(dim, W)``, ``W <= MAX_WIDTH``; bias ``(dim,)`` or None.
        states: ``(slots, dim, >= W-1)`` any strides.
        qsl: ``(B+1,)`` int32/int64 contiguous, or None.
        slots: ``(B,)`` int32/int64 (any stride), or None (slot ``b``).
        has_init: ``(B,)`` bool contiguous (``init_mode`` 1), else None.
        init_mode: 0 zeros, 1 per ``has_init``, 2 always read the state.
        zero_skipped: zero the output rows of pad/null requests (prefill).
        split: allow cutting a request in token chunks across threads (needs ``y`` not ``x``).
        mode: 0 items are (chunk, channel block); 1 items are whole requests.
    """
    dim, W = weight.shape
    pad, null = pad_slot_id, null_block_id
    slot_stride = slots.stride(0) if slots is not None else 1
    prm = _PRM(
        B, L, dim, W,
        DTYPE_CODE[x.dtype], *x_strides,
        DTYPE_CODE[y.dtype], *y_strides,
        DTYPE_CODE[states.dtype], *states.stride(),
        DTYPE_CODE[weight.dtype], *weight.stride(),
        DTYPE_CODE[bias.dtype] if bias is not None else 0,
        bias.stride(0) if bias is not None else 0,
        int(qsl is not None and qsl.dtype == torch.int64),
        int(slots is not None and slots.dtype == torch.int64),
        slot_stride,
        pad if pad is not None else 0, int(pad is not None),
        null if null is not None else 0, int(null is not None),
        init_mode, int(silu), int(zero_skipped), int(split), mode,
    )  # fmt: skip
    cdll.mb_conv(
        x.data_ptr(),
        y.data_ptr(),
        states.data_ptr(),
        weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        None if qsl is None else qsl.data_ptr(),
        None if slots is None else slots.data_ptr(),
        None if has_init is None else has_init.data_ptr(),
        prm,
        torch.get_num_threads(),
    )
