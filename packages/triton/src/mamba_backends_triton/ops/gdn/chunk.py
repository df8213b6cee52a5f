"""Chunked gated delta rule prefill: ``chunk_gated_delta_rule``.

Semantics and signature are the spec's (:func:`mamba_backends.reference.
chunk_gated_delta_rule`, vLLM 0.32's): varlen ``cu_seqlens`` (``B == 1``; output rows past
``cu_seqlens[-1]`` are zero) or ``B`` rows of ``T`` tokens, GVA (value head ``hv`` reads q/k
head ``hv // (HV // H)``), in-kernel q/k l2 norm, ``scale`` (default ``K ** -0.5``), initial
states ``[N, HV, V, K]`` (any strides, any float dtype, read only) and float32 final states
``[N, HV, V, K]``. ``chunk_indices``/``chunk_offsets`` (vLLM's metadata, a function of
``cu_seqlens``) are accepted and unused: the kernel walks each sequence itself.

One launch of :func:`~.chunk_kernels._gdn_chunk_kernel`, grid ``(N + 1, HV, cdiv(V, BLOCK_V))``
with ``cu_seqlens`` (the extra program zeroes the padded tail), ``(N, HV, cdiv(V, BLOCK_V))``
without. The chunk length ``BLOCK_T`` and ``BLOCK_V`` come from the tuning tables (op
``chunk_gated_delta_rule``, keys ``K``, ``V``); they cannot change the result beyond rounding.
Dots take the inputs' 16-bit dtype when q/k/v are fp16 or bf16 (as fla's kernels do), exact
float32 (``input_precision="ieee"``) for fp32 inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
from torch import Tensor

from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton._options import launch_options
from mamba_backends_triton.ops.conv1d._common import check_kernel_dtypes
from mamba_backends_triton.ops.gdn.chunk_kernels import _gdn_chunk_kernel

OP = "chunk_gated_delta_rule"
_HALF = (torch.float16, torch.bfloat16)
#: tl.dot needs every tile dimension >= 16.
_MIN_DOT = 16


def _launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``BLOCK_T`` tokens per chunk and ``BLOCK_V`` value rows per program (both >= 16)."""
    blocks = {
        "BLOCK_T": max(int(cfg["BLOCK_T"]), _MIN_DOT),
        "BLOCK_V": max(int(cfg["BLOCK_V"]), _MIN_DOT),
    }
    return blocks, launch_options(cfg)


def _block(n: int) -> int:
    return max(triton.next_power_of_2(n), _MIN_DOT)


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_indices: Tensor | None = None,
    chunk_offsets: Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    core_attn_out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Chunked GDN prefill (see the module docstring).

    ``q, k: [B, T, H, K]``; ``v: [B, T, HV, V]``; ``g, beta: [B, T, HV]``;
    ``initial_state: [N, HV, V, K]``; ``cu_seqlens: [N + 1]`` (``B == 1``). Returns
    ``(o [B, T, HV, V] in q.dtype (or core_attn_out), final_state [N, HV, V, K] float32 or
    None)``. Float64 arguments raise ``NotImplementedError`` (the kernel computes in float32).
    """
    B, T, H, HV, K, V, N = _contract.check_chunk_gated_delta_rule_args(
        q, k, v, g, beta, scale, initial_state, cu_seqlens, core_attn_out
    )
    check_kernel_dtypes(
        OP, q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state,
        core_attn_out=core_attn_out,
    )  # fmt: skip
    o = core_attn_out if core_attn_out is not None else q.new_empty((B, T, HV, V))
    final = None
    if output_final_state:
        final = torch.empty((N, HV, V, K), dtype=torch.float32, device=q.device)
    varlen = cu_seqlens is not None
    programs = N + int(varlen)
    if programs == 0:
        return o, final
    block_k = _block(K)
    cfg = launch_config(OP, q.device, K=K, V=V)
    blocks, options = _launch(cfg, {})
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], _block(V))
    feats = {
        "HAS_INIT": initial_state is not None, "STORE_FINAL": final is not None,
        "VARLEN": varlen, "L2NORM": bool(use_qk_l2norm_in_kernel),
        "F32_DOT": None if q.dtype in _HALF else "ieee", "BLOCK_K": block_k,
    }  # fmt: skip
    h0 = initial_state if initial_state is not None else o
    h0_strides = tuple(initial_state.stride()) if initial_state is not None else (0, 0, 0, 0)
    ht = final if final is not None else o
    cu = cu_seqlens if cu_seqlens is not None else g
    sc = K**-0.5 if scale is None else float(scale)
    grid = (programs, HV, triton.cdiv(V, blocks["BLOCK_V"]))
    _gdn_chunk_kernel[grid](
        q, k, v, g, beta, h0, o, ht, cu, N, T, HV, K, V, HV // H, sc,
        *q.stride(), *k.stride(), *v.stride(), *g.stride(), *beta.stride(), *h0_strides,
        *o.stride(), **feats, **blocks, **options,
    )  # fmt: skip
    return o, final


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): Qwen3-Next's
# prefill (bf16 q/k/v/beta, fp32 g and initial states, H=16 -> HV=32, K=V=128, varlen, l2
# norm, final states), fp16 batch rows without an initial state or the l2 norm (K=V=64), fp32
# (exact float32 dots) at K=V=128, and K=40 (padded columns) with strides the JIT cannot
# prove divisible by 16.
_QWEN = {
    "q_ptr": "bf16", "k_ptr": "bf16", "v_ptr": "bf16", "g_ptr": "fp32", "beta_ptr": "bf16",
    "h0_ptr": "fp32", "o_ptr": "bf16", "ht_ptr": "fp32", "cu_ptr": "i32",
}  # fmt: skip
_F16 = {**{k: "fp16" for k in _QWEN}, "g_ptr": "fp32", "ht_ptr": "fp32", "cu_ptr": "i64"}
_F32 = {**{k: "fp32" for k in _QWEN}, "cu_ptr": "i64"}
_UNIT = {"stride_q_k": 1, "stride_k_k": 1, "stride_v_v": 1, "stride_h0_k": 1, "stride_o_v": 1}
_DIVISIBLE = (
    "K", "V", "stride_q_b", "stride_q_t", "stride_q_h", "stride_k_b", "stride_k_t",
    "stride_k_h", "stride_v_b", "stride_v_t", "stride_v_h", "stride_o_b", "stride_o_t",
    "stride_o_h", "stride_h0_n", "stride_h0_h", "stride_h0_v",
)  # fmt: skip


def _variant(name: str, ptrs: dict[str, str], K: int, flags: str, f32: bool, div=()) -> Variant:
    """``flags``: letters of the features on (h: initial state, f: final states, v: varlen,
    l: l2 norm)."""
    letters = (("HAS_INIT", "h"), ("STORE_FINAL", "f"), ("VARLEN", "v"), ("L2NORM", "l"))
    consts: dict[str, Any] = {f: c in flags for f, c in letters}
    consts.update(_UNIT, F32_DOT="ieee" if f32 else None, BLOCK_K=_block(K))
    return Variant(name, ptrs, consts, tuple(div))


_VARIANTS = (
    _variant("Qwen3-Next bf16, fp32 states, K128, varlen, l2", _QWEN, 128, "hfvl", False,
             _DIVISIBLE),
    _variant("fp16 batch rows, no init, no l2, K64", _F16, 64, "f", False, _DIVISIBLE),
    _variant("fp32 exact dots, K128, varlen, l2", _F32, 128, "hfvl", True, _DIVISIBLE),
    _variant("fp16 K40 odd strides, varlen", _F16, 40, "hfvl", False),
)  # fmt: skip

#: AMD: the fused chunk kernel spills 55-70 registers on gfx90a/gfx942/gfx950 with every config
#: tried (32x32 at 4 warps, 16x16 at 8 warps); NVIDIA: the fp32 specialisation (exact float32
#: dots, ``input_precision="ieee"``) spills kilobytes with every config tried. No platform
#: selects the kernel on AMD yet and fp32 GDN prefill on a GPU is rare; fixing both (fewer live
#: tiles: the inverse in 16x16 blocks, or a split chunk-state/output form) is open work, listed
#: here so the compile check shows it instead of hiding it.
_AMD = {"hip:": "register spills on AMD, open (the fused GDN chunk kernel is not AMD-ready)"}
_FP32 = {**_AMD, "cuda:": "fp32 exact dots spill on NVIDIA, open"}

COMPILE_CHECKS = (
    KernelCheck(
        _gdn_chunk_kernel, OP, tuple(v for v in _VARIANTS if v.constexprs["F32_DOT"] is None),
        _launch, known_failures=_AMD,
    ),
    KernelCheck(
        _gdn_chunk_kernel, OP, tuple(v for v in _VARIANTS if v.constexprs["F32_DOT"] is not None),
        _launch, known_failures=_FP32,
    ),
)  # fmt: skip
