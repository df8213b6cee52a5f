"""Fused C kernels for gated delta net (source in ``_native_gdn_src``), loaded with ctypes.

Built on first use through :func:`mamba_backends_cpu.ops._native.load_library`; when it
returns None (``MAMBA_BACKENDS_CPU_NATIVE=0``, no compiler) :func:`available` is False and
:mod:`.gdn` keeps its PyTorch paths. fp32 / bf16 / fp16 tensors are read in place through
their strides (unit stride on the feature axis of ``q``, ``k``, ``v`` and the output); all
math is fp32.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from mamba_backends.reference.gdn import L2NORM_EPS
from mamba_backends_cpu.ops._native import load_library
from mamba_backends_cpu.ops._native_gdn_src import SOURCE

#: Decode (rows kernel) when no sequence has more tokens than this; else the tile kernel.
ROWS_MAX_TOKENS = 8

DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

assert L2NORM_EPS == 1e-6  # hard-coded in the C source


def _signatures() -> dict[str, list[Any]]:
    vp, ci, cf = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    kernel: list[Any] = [vp] * 11 + [cf, ci]
    return {
        "mb_gdn_rows": kernel,
        "mb_gdn_tiles": kernel,
        "mb_gdn_gating": [vp] * 7 + [cf, cf],
    }


def _lib() -> ctypes.CDLL | None:
    return load_library("gdn", SOURCE, _signatures())


def available() -> bool:
    """Whether the native GDN kernels are built and enabled (builds them on first call)."""
    return _lib() is not None


def supported(*tensors: Tensor | None) -> bool:
    """Whether every given tensor is a CPU tensor of a dtype the kernels read."""
    return all(t is None or (t.dtype in DTYPE_CODE and t.device.type == "cpu") for t in tensors)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _unit_last(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """``x`` as ``[tokens, heads, F]`` with a unit stride on ``F`` (a view when possible)."""
    x = x.reshape(shape)
    return x if x.stride(-1) == 1 or shape[-1] == 1 else x.contiguous()


def gating(
    A_log: Tensor, a: Tensor, b: Tensor, dt_bias: Tensor, beta: float, threshold: float
) -> tuple[Tensor, Tensor]:
    """Fused GDN gating: ``g: [1, T, HV]`` fp32 and ``beta: [1, T, HV]`` in ``b.dtype``."""
    lib = _lib()
    assert lib is not None
    T, HV = a.shape
    g = torch.empty(1, T, HV, dtype=torch.float32)
    bo = torch.empty(1, T, HV, dtype=b.dtype)
    prm = torch.tensor(
        [T, HV, DTYPE_CODE[A_log.dtype], DTYPE_CODE[a.dtype], DTYPE_CODE[b.dtype],
         DTYPE_CODE[dt_bias.dtype], *a.stride(), *b.stride(), dt_bias.stride(0),
         A_log.stride(0)],
        dtype=torch.int64,
    )  # fmt: skip
    lib.mb_gdn_gating(
        _ptr(A_log), _ptr(a), _ptr(b), _ptr(dt_bias), _ptr(g), _ptr(bo), _ptr(prm),
        float(beta), float(threshold),
    )  # fmt: skip
    return g, bo


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None,
    o: Tensor,
    scale: float,
    l2norm: bool,
    seq: Tensor,
    state_in: Tensor | None,
    state_out: Tensor | None,
    dst_mode: int,
    dst2d: Tensor | None,
    max_len: int,
) -> None:
    """Run the delta-rule recurrence for every sequence, in one fused pass.

    ``q, k: [BT, H, K]``; ``v: [BT, HV, V]``; ``g: [B, T, HV]``; ``beta: [B, T, HV]`` or
    ``[B, T, HV, V]`` or None (ones); ``o: [BT, HV, V]`` written (unit stride on ``V``);
    ``state_in``/``state_out``: ``[slots, HV, V, K]`` any strides (may be the same tensor);
    ``seq: [N, 4]`` int64 rows (first token, count, source slot, destination slot), see the C
    source for ``dst_mode`` and ``dst2d: [N, ncol]`` int64. The tile kernel runs when
    ``max_len`` exceeds :data:`ROWS_MAX_TOKENS`, the rows kernel otherwise.
    """
    lib = _lib()
    assert lib is not None
    BT, H, K = q.shape
    HV, V = v.shape[1], v.shape[2]
    q = _unit_last(q, (BT, H, K))
    k = _unit_last(k, (BT, H, K))
    v = _unit_last(v, (BT, HV, V))
    assert o.stride(-1) == 1 or V == 1
    g2 = g.reshape(BT, HV)
    b3 = None if beta is None else beta.reshape(BT, HV, V if beta.dim() == 4 else 1)
    b_st = (0, 0, 0) if b3 is None else (*b3.stride()[:2], b3.stride(2) if b3.shape[2] > 1 else 0)
    s_in = (0,) * 4 if state_in is None else state_in.stride()
    s_out = (0,) * 4 if state_out is None else state_out.stride()

    def code(t: Tensor | None) -> int:
        return 0 if t is None else DTYPE_CODE[t.dtype]

    ncol = 0 if dst2d is None else dst2d.shape[1]
    prm = torch.tensor(
        [seq.shape[0], H, HV, K, V, int(l2norm), dst_mode, ncol,
         code(q), code(k), code(v), code(g2), code(b3), code(o), code(state_in),
         code(state_out), *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *g2.stride(),
         *b_st, *o.stride()[:2], *s_in, *s_out],
        dtype=torch.int64,
    )  # fmt: skip
    fn = lib.mb_gdn_tiles if max_len > ROWS_MAX_TOKENS else lib.mb_gdn_rows
    fn(
        _ptr(q), _ptr(k), _ptr(v), _ptr(g2), _ptr(b3), _ptr(o), _ptr(state_in),
        _ptr(state_out), _ptr(seq), _ptr(dst2d), _ptr(prm), float(scale),
        torch.get_num_threads(),
    )  # fmt: skip
