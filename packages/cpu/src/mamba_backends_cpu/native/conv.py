"""Fused C kernel for causal depthwise conv1d (``csrc/conv.c``), via ctypes.

One kernel serves prefill (``causal_conv1d_fn``) and decode (``causal_conv1d_update``): it
reads ``x``, the weights and the conv states in place through their strides (fp32 / bf16 /
fp16, fp32 math), vectorises over channels (unit stride in channel-last ``x`` and in vLLM's
``(W-1, dim)`` state pages) and runs channel blocks and sequence chunks on OpenMP threads.
Built on first use by :mod:`._build`; when that fails or is disabled, :func:`lib` is None and
the op keeps its PyTorch paths.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from mamba_backends_cpu.native import _build
from mamba_backends_cpu.tuning import cpu_config

#: The widest kernel the C source holds (``KMAX + 1``).
MAX_WIDTH = 4
#: The tuning table of the per-CPU tunables (``chunk_tokens``: prefill tokens per work item
#: when a request is split across threads; ``prefetch``: tokens ahead that the vector path
#: prefetches), in ``mamba_backends_cpu/tuning/native_conv.json``.
TUNING_OP = "native_conv"

DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_INDEX = (torch.int32, torch.int64)
_P, _I = ctypes.c_void_p, ctypes.c_int64


class MbConvArgs(ctypes.Structure):
    """Mirror of ``MbConvArgs`` in ``csrc/mb_args.h``."""

    _fields_ = [
        *((n, _P) for n in ("x", "y", "states", "weight", "bias", "qsl", "slots", "has_init")),
        *((n, _I) for n in ("B", "L", "dim", "W", "xdt", "sxb", "sxt", "sxc")),
        *((n, _I) for n in ("ydt", "syb", "syt", "syc", "sdt", "s0", "s1", "s2")),
        *((n, _I) for n in ("wdt", "sw0", "sw1", "bdt", "sb", "q64", "i64", "sslot")),
        *((n, _I) for n in ("pad_id", "has_pad", "null_id", "has_null", "init_mode", "silu")),
        *((n, _I) for n in ("zero_skipped", "split", "mode", "nthreads", "chunk_tokens")),
        *((n, _I) for n in ("prefetch", "check_slots", "nslots")),
    ]


_pack_conv = _build.packer(MbConvArgs)

LIBRARY = _build.register(
    _build.Library(name="conv", sources=("conv.c", "abi.c"), kernels={"mb_conv": MbConvArgs})
)


def lib() -> ctypes.CDLL | None:
    """The conv library, or None when native kernels are disabled or unbuildable."""
    return _build.load(LIBRARY)


def supported(*tensors: Tensor | None) -> bool:
    """Whether every given tensor is a CPU tensor of a dtype the kernel reads."""
    return all(t is None or (t.dtype in DTYPE_CODE and t.is_cpu) for t in tensors)


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
    check_slots: bool = False,
) -> int:
    """Run the kernel (see ``csrc/conv.c`` for the exact contract).

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
        check_slots: a live slot outside ``[0, slots)`` or written twice makes the kernel
            write nothing and return :data:`._build.BADINDEX` (else 0).
    """
    dim, W = weight.shape
    pad, null = pad_slot_id, null_block_id

    def ptr(t: Tensor | None) -> int:
        return 0 if t is None else t.data_ptr()

    cfg = cpu_config(TUNING_OP, dim=dim, W=W)
    args = _pack_conv(
        ptr(x), ptr(y), ptr(states), ptr(weight), ptr(bias), ptr(qsl), ptr(slots),
        ptr(has_init), B, L, dim, W,
        DTYPE_CODE[x.dtype], *x_strides,
        DTYPE_CODE[y.dtype], *y_strides,
        DTYPE_CODE[states.dtype], *states.stride(),
        DTYPE_CODE[weight.dtype], *weight.stride(),
        DTYPE_CODE[bias.dtype] if bias is not None else 0,
        bias.stride(0) if bias is not None else 0,
        int(qsl is not None and qsl.dtype == torch.int64),
        int(slots is not None and slots.dtype == torch.int64),
        slots.stride(0) if slots is not None else 1,
        pad if pad is not None else 0, int(pad is not None),
        null if null is not None else 0, int(null is not None),
        init_mode, int(silu), int(zero_skipped), int(split), mode, torch.get_num_threads(),
        cfg["chunk_tokens"], cfg["prefetch"], int(check_slots), states.shape[0],
    )  # fmt: skip
    return _build.call(cdll.mb_conv, args, allow=(_build.BADINDEX,))
