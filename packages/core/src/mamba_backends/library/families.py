"""What the custom-op layer must know about each op family: written tensors, results, shapes.

One entry per op (vLLM's name), shared by every backend, because all of it is part of the
contract (:mod:`mamba_backends.contract`, the spec's docstrings in
:mod:`mamba_backends.reference`):

- ``mutates``: the arguments an op may write in place. ``torch.library`` needs them exact: an
  argument written but not declared is a silent miscompile. An argument that is written only in
  some forms (``x`` of ``causal_conv1d_update`` when ``out`` is None) is declared always;
- ``result``: how the op's Python result is made of fresh tensors and of its arguments. A
  custom op may not return an alias of an input, so the registered op returns only the fresh
  tensors and the wrapper rebuilds the spec's result from them and the arguments. A plan is a
  :class:`New` (a fresh tensor and its layout), an argument's name (that argument, written in
  place, is returned), None, or a tuple of plans. It depends only on which arguments are
  None and on Python flags, never on tensor values;
- ``fake``: the fresh tensors' shapes, dtypes and devices, computed from metadata only (it runs
  on ``meta``/fake tensors under ``torch.compile`` and must never read a value);
- ``returns``: the most fresh tensors a call can have. ``torch.compile`` functionalizes a
  mutating op only if it returns a fixed number of tensors, so the registered op always returns
  that many, padded with empty placeholders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import Tensor


@dataclass(frozen=True)
class New:
    """Plan marker: a fresh tensor the op allocates, contiguous or with the strides of the
    argument ``like`` (as ``torch.empty_like(args[like])``). The registered op returns it in
    that layout (copying a backend's result that has another), since compiled code indexes it
    by the strides of the fake."""

    like: str | None = None


#: A fresh contiguous tensor.
NEW: Final = New()

Plan = Any  # New | str | None | tuple[Plan, ...]
Args = Mapping[str, Any]


@dataclass(frozen=True)
class OpFamily:
    """The contract facts of one op that its custom-op registration needs."""

    #: Arguments the op may write in place (declared to torch.library as mutated).
    mutates: tuple[str, ...]
    #: ``plan(args)``: the structure of the op's result (see the module docstring).
    result: Callable[[Args], Plan]
    #: ``fake(args)``: the fresh tensors of the result, in plan order (metadata only).
    fake: Callable[[Args], list[Tensor]]
    #: The most fresh tensors in a result (the registered op's fixed number of returns).
    returns: int = 0


def _like_x(a: Args) -> list[Tensor]:
    return [torch.empty_like(a["x"])]


# --------------------------------------------------------------------------------------------
# conv1d
# --------------------------------------------------------------------------------------------

# causal_conv1d_fn: x (dim, T) -> out (dim, T), a new tensor with x's strides.
_CONV_FN = OpFamily(mutates=("conv_states",), result=lambda a: New("x"), fake=_like_x, returns=1)

# causal_conv1d_update: writes out, or x when out is None, and returns the tensor written.
_CONV_UPDATE = OpFamily(
    mutates=("x", "conv_state", "out"),
    result=lambda a: "out" if a["out"] is not None else "x",
    fake=lambda a: [],
)

# --------------------------------------------------------------------------------------------
# Mamba1 / Mamba2
# --------------------------------------------------------------------------------------------

# selective_scan_fn: the output goes into z (gated; delta holds the ungated y) or delta.
_SCAN = OpFamily(
    mutates=("ssm_states", "delta", "z"),
    result=lambda a: "z" if a["z"] is not None else "delta",
    fake=lambda a: [],
)

# selective_state_update: out (T, H, P) / (T, dim) written and returned, else a new one like x.
_SSU = OpFamily(
    mutates=("state", "out"),
    result=lambda a: "out" if a["out"] is not None else New("x"),
    fake=lambda a: [] if a["out"] is not None else _like_x(a),
    returns=1,
)


def _ssd_fake(a: Args) -> list[Tensor]:
    """States ``(batch or nchunks, H, P, N)`` in ``state_dtype`` (default ``C.dtype``)."""
    if a["final_states_out"] is not None:
        return []
    x, B = a["x"], a["B"]
    offsets = a["cu_chunk_seqlens"] if a["return_intermediate_states"] else a["cu_seqlens"]
    dtype = a["state_dtype"] if a["state_dtype"] is not None else a["C"].dtype
    shape = (offsets.shape[0] - 1, x.shape[1], x.shape[2], B.shape[2])
    return [x.new_empty(shape, dtype=dtype)]


# mamba_chunk_scan_combined_varlen: out (T, H, P) written; returns the states, or None when it
# scatters them into final_states_out (vLLM 0.33's form).
_SSD = OpFamily(
    mutates=("out", "final_states_out"),
    result=lambda a: None if a["final_states_out"] is not None else NEW,
    fake=_ssd_fake,
    returns=1,
)

# store_prefill_checkpoint: copies a mid-prefill state into its block; returns None.
_CHECKPOINT = OpFamily(
    mutates=("conv_state", "ssm_state"), result=lambda a: None, fake=lambda a: []
)

# --------------------------------------------------------------------------------------------
# GDN
# --------------------------------------------------------------------------------------------


def _gating_fake(a: Args) -> list[Tensor]:
    """``a, b: [T, HV]`` -> ``g [1, T, HV]`` float32, ``beta [1, T, HV]`` in ``b.dtype``."""
    x, b = a["a"], a["b"]
    shape = (1, *x.shape)
    return [x.new_empty(shape, dtype=torch.float32), b.new_empty(shape)]


def _gdn_o(a: Args) -> Tensor:
    """``o [B, T, HV, V]`` in ``q.dtype`` (``q [B, T, H, K]``, ``v [B, T, HV, V]``)."""
    q, v = a["q"], a["v"]
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2], v.shape[3]))


def _gdn_num_seqs(a: Args) -> Any:
    return a["cu_seqlens"].shape[0] - 1 if a["cu_seqlens"] is not None else a["q"].shape[0]


def _chunk_gdn_fake(a: Args) -> list[Tensor]:
    """``o`` unless ``core_attn_out`` is given; ``final [N, HV, V, K]`` float32 if asked."""
    q, v = a["q"], a["v"]
    fresh = [] if a["core_attn_out"] is not None else [_gdn_o(a)]
    if a["output_final_state"]:
        shape = (_gdn_num_seqs(a), v.shape[2], v.shape[3], q.shape[3])
        fresh.append(q.new_empty(shape, dtype=torch.float32))
    return fresh


def _recurrent_gdn_fake(a: Args) -> list[Tensor]:
    """``o``; without ``inplace_final_state`` also the per-token states ``[B*T, HV, V, K]``."""
    fresh = [_gdn_o(a)]
    if not a["inplace_final_state"]:
        q, v, init = a["q"], a["v"], a["initial_state"]
        dtype = init.dtype if init is not None else torch.float32
        shape = (q.shape[0] * q.shape[1], v.shape[2], v.shape[3], q.shape[3])
        fresh.append(q.new_empty(shape, dtype=dtype))
    return fresh


_GATING = OpFamily(mutates=(), result=lambda a: (NEW, NEW), fake=_gating_fake, returns=2)

# chunk_gated_delta_rule: (o, final_state | None); o is core_attn_out when given.
_CHUNK_GDN = OpFamily(
    mutates=("core_attn_out",),
    result=lambda a: (
        "core_attn_out" if a["core_attn_out"] is not None else NEW,
        NEW if a["output_final_state"] else None,
    ),
    fake=_chunk_gdn_fake,
    returns=2,
)

# fused_recurrent_gated_delta_rule: (o, initial_state written in place | per-token states).
_RECURRENT_GDN = OpFamily(
    mutates=("initial_state",),
    result=lambda a: (NEW, "initial_state" if a["inplace_final_state"] else NEW),
    fake=_recurrent_gdn_fake,
    returns=2,
)

# --------------------------------------------------------------------------------------------
# Lightning / linear attention
# --------------------------------------------------------------------------------------------


def _lightning_fake(a: Args) -> list[Tensor]:
    """``o [b, h, n, e]`` in ``q.dtype``; ``kv [b, h, ceil(n / block_size) + 1, d, e]`` f32."""
    q, v = a["q"], a["v"]
    b, h, n, d = q.shape
    e = v.shape[3]
    nb = (n + a["block_size"] - 1) // a["block_size"]
    return [q.new_empty((b, h, n, e)), q.new_empty((b, h, nb + 1, d, e), dtype=torch.float32)]


def _decode_fake(a: Args) -> list[Tensor]:
    """``q [B, H, 1, D]`` -> ``[B, H * D]`` in ``q.dtype``."""
    q = a["q"]
    return [q.new_empty((q.shape[0], q.shape[1] * q.shape[3]))]


_LIGHTNING = OpFamily(mutates=(), result=lambda a: (NEW, NEW), fake=_lightning_fake, returns=2)
_LINEAR_DECODE = OpFamily(
    mutates=("kv_caches",), result=lambda a: NEW, fake=_decode_fake, returns=1
)

#: Every op of :data:`mamba_backends.backend.OP_NAMES`, by vLLM's name.
OP_FAMILIES: dict[str, OpFamily] = {
    "causal_conv1d_fn": _CONV_FN,
    "causal_conv1d_update": _CONV_UPDATE,
    "selective_scan_fn": _SCAN,
    "selective_state_update": _SSU,
    "mamba_chunk_scan_combined_varlen": _SSD,
    "store_prefill_checkpoint": _CHECKPOINT,
    "fused_gdn_gating": _GATING,
    "chunk_gated_delta_rule": _CHUNK_GDN,
    "fused_recurrent_gated_delta_rule": _RECURRENT_GDN,
    "lightning_attention": _LIGHTNING,
    "linear_decode_forward": _LINEAR_DECODE,
}
