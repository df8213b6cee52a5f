"""Mamba2 SSD varlen prefill: ``mamba_chunk_scan_combined_varlen`` (vLLM 0.32, plus 0.33's
``final_states_out``/``final_state_indices`` scatter).

Semantics and signature are the spec's (:func:`mamba_backends.reference.
mamba_chunk_scan_combined_varlen`). One launch of the fused kernel of :mod:`.chunk_scan`,
grid ``(batch, H, cdiv(P, BLOCK_P))``: each program scans one sequence's chunks for one head
and P block, so no state leaves the registers between chunks, and it writes its own state
row(s) only:

- by default the final state of each sequence to a fresh ``(batch, H, P, N)`` tensor;
- with ``return_intermediate_states`` the state after every chunk, ``(nchunks, H, P, N)``;
- with ``final_states_out`` (vLLM 0.33) the final state straight into the pool row
  ``final_state_indices[b]`` (pad/null entries skipped), any strides; returns ``None``.

Each program reads ``initial_states[b]`` (a separate tensor by contract) before its first
write, so reads never race writes. Tokens past ``cu_seqlens[-1]`` are neither read nor
written. The chunking only bounds the sub-blocks (the result does not depend on it, as in the
spec) and places the intermediate states; ``seq_idx`` is checked, not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton._options import launch_options
from mamba_backends_triton.ops.conv1d._common import check_kernel_dtypes
from mamba_backends_triton.ops.ssd.chunk_scan import (
    CHUNK_STATES,
    FINAL_STATES,
    SCATTER_STATES,
    _ssd_varlen_kernel,
    blocks_for,
)

OP = "mamba_chunk_scan_combined_varlen"
_HALF = (torch.float16, torch.bfloat16)


def _f32_dot(x: Tensor, B: Tensor, C: Tensor) -> str | None:
    """None (dots in the inputs' 16-bit dtype), else exact float32 dots (``"ieee"``)."""
    return None if x.dtype == B.dtype == C.dtype and x.dtype in _HALF else "ieee"


def _options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return launch_options(cfg)


def _check_launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The compile check's mapping: the config's tiles unclipped, N from the variant."""
    blocks = blocks_for(cfg["BLOCK_P"], feats["BLOCK_N"], cfg["BLOCK_L"], dict(cfg))
    return blocks, _options(cfg)


def mamba_chunk_scan_combined_varlen(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    cu_seqlens: Tensor,
    cu_chunk_seqlens: Tensor,
    last_chunk_indices: Tensor,
    seq_idx: Tensor,
    out: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_intermediate_states: bool = False,
    state_dtype: torch.dtype | None = None,
    final_states_out: Tensor | None = None,
    final_state_indices: Tensor | None = None,
) -> Tensor | None:
    """Mamba2 scan over packed sequences, written into ``out`` (T, H, P) in place.

    x, z (T, H, P); dt (T, H); A, dt_bias (H,); B, C (T, G, N); D (H,) or (H, P);
    initial_states (batch, H, P, N) or None (zeros); cu_seqlens (batch+1,);
    cu_chunk_seqlens (nchunks+1,); last_chunk_indices (batch,); seq_idx (nchunks,);
    final_states_out (slots, H, P, N), any strides, with final_state_indices (batch,).

    Returns the final states (batch, H, P, N), or the state after every chunk
    (nchunks, H, P, N) with ``return_intermediate_states``, in ``state_dtype`` (default
    ``C.dtype``); ``None`` with ``final_states_out``. Float64 arguments raise
    ``NotImplementedError`` (the kernel computes in float32).
    """
    _contract.check_ssd_varlen_args(
        x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx,
        out, D, z, dt_bias, initial_states, dt_limit, state_dtype, return_intermediate_states,
        final_states_out, final_state_indices,
    )  # fmt: skip
    check_kernel_dtypes(
        OP, x=x, dt=dt, A=A, B=B, C=C, out=out, D=D, z=z, dt_bias=dt_bias,
        initial_states=initial_states, final_states_out=final_states_out,
    )  # fmt: skip
    if state_dtype == torch.float64:
        raise NotImplementedError(
            f"{OP}: argument 'state_dtype' is float64; the Triton kernel returns float32, "
            "float16 or bfloat16 states"
        )
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    if T >= 2**31:
        raise NotImplementedError(f"{OP}: {T} tokens; the kernel indexes tokens in int32")
    batch = cu_seqlens.shape[0] - 1
    nchunks = cu_chunk_seqlens.shape[0] - 1
    if final_states_out is not None:
        mode, states = SCATTER_STATES, final_states_out
    else:
        rows = nchunks if return_intermediate_states else batch
        sdt = state_dtype if state_dtype is not None else C.dtype
        mode = CHUNK_STATES if return_intermediate_states else FINAL_STATES
        states = torch.empty((rows, H, P, N), dtype=sdt, device=x.device)
    if batch == 0 or H == 0 or P == 0:
        if final_states_out is None:
            return states.zero_()
        return None

    cfg = launch_config(OP, x.device, headdim=P, dstate=N, chunk_size=chunk_size)
    blocks = blocks_for(P, N, chunk_size, cfg)
    dummy = cu_seqlens  # stands for absent optional tensors (never loaded)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    D_arg = D if D is not None else A
    z_arg = z if z is not None else x
    init_arg = initial_states if initial_states is not None else states
    slots = final_state_indices if final_state_indices is not None else dummy
    D_strides = (0, 0) if D is None else (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
    grid = (batch, H, triton.cdiv(P, blocks["BLOCK_P"]))
    _ssd_varlen_kernel[grid](
        x, dt, A, B, C, D_arg, z_arg, dt_bias if dt_bias is not None else A, init_arg,
        cu_seqlens, cu_chunk_seqlens, last_chunk_indices, slots, out, states,
        H, P, N, H // G, PAD_SLOT_ID, NULL_BLOCK_ID, lo, hi,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *D_strides, *z_arg.stride(),
        *out.stride(), *init_arg.stride(), *states.stride(),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, HAS_INIT=initial_states is not None,
        DT_SOFTPLUS=bool(dt_softplus), HAS_SLOTS=final_state_indices is not None,
        STATE_MODE=mode, F32_DOT=_f32_dot(x, B, C),
        EVEN_P=P % blocks["BLOCK_P"] == 0, EVEN_N=N == blocks["BLOCK_N"],
        **blocks, **_options(cfg),
    )  # fmt: skip
    return None if final_states_out is not None else states


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): vLLM 0.33's
# MambaMixer2 call (bf16 x/B/C/z column views of one projection, fp32 dt/A/D/dt_bias, fp32
# pool scattered through int32 indices, N=128), fp16 returning fp16 final states without any
# optional input (N=64), and fp32 (exact float32 dots) with per-channel D, intermediate states and
# int64 metadata (N=128).
_VLLM = {
    "x_ptr": "bf16", "dt_ptr": "bf16", "A_ptr": "fp32", "B_ptr": "bf16", "C_ptr": "bf16",
    "D_ptr": "fp32", "z_ptr": "bf16", "dt_bias_ptr": "fp32", "init_ptr": "fp32",
    "cu_seqlens_ptr": "i32", "cu_chunk_ptr": "i32", "last_chunk_ptr": "i32", "slot_ptr": "i32",
    "out_ptr": "bf16", "states_ptr": "fp32",
}  # fmt: skip
_F16 = {
    **{k: "fp16" for k in _VLLM},
    **{k: "i32" for k in ("cu_seqlens_ptr", "cu_chunk_ptr", "last_chunk_ptr", "slot_ptr")},
}
_F32 = {
    **{k: "fp32" for k in _VLLM},
    **{k: "i64" for k in ("cu_seqlens_ptr", "cu_chunk_ptr", "last_chunk_ptr", "slot_ptr")},
}
_UNIT = {
    "stride_x_p": 1, "stride_dt_h": 1, "stride_B_n": 1, "stride_C_n": 1, "stride_z_p": 1,
    "stride_o_p": 1, "stride_i_n": 1, "stride_s_n": 1,
}  # fmt: skip
_NONE = {
    "HAS_D": False, "D_PER_P": False, "HAS_Z": False, "HAS_DT_BIAS": False, "HAS_INIT": False,
    "DT_SOFTPLUS": False, "HAS_SLOTS": False, "EVEN_P": True, "EVEN_N": True,
}  # fmt: skip
#: P a multiple of BLOCK_P and N a power of two (every Mamba2 model: P 64, N 64/128): what the
#: launcher passes as EVEN_P/EVEN_N, no padding masks on channels and state columns.
_VARIANTS = (
    Variant(
        "vLLM 0.33: bf16, fp32 pool scatter, D (H,), z, N128",
        _VLLM,
        {
            **_UNIT,
            **_NONE,
            "HAS_D": True,
            "HAS_Z": True,
            "HAS_DT_BIAS": True,
            "HAS_INIT": True,
            "DT_SOFTPLUS": True,
            "HAS_SLOTS": True,
            "STATE_MODE": SCATTER_STATES,
            "F32_DOT": None,
            "BLOCK_N": 128,
        },
    ),  # fmt: skip
    Variant(
        "fp16, final states, no optionals, N64",
        _F16,
        {**_UNIT, **_NONE, "STATE_MODE": FINAL_STATES, "F32_DOT": None, "BLOCK_N": 64},
    ),
    Variant(
        "fp32 exact dots, D (H, P), chunk states, int64 metadata, N128",
        _F32,
        {
            **_UNIT,
            **_NONE,
            "HAS_D": True,
            "D_PER_P": True,
            "HAS_INIT": True,
            "DT_SOFTPLUS": True,
            "STATE_MODE": CHUNK_STATES,
            "F32_DOT": "ieee",
            "BLOCK_N": 128,
        },
    ),  # fmt: skip
)
#: The same specialisations with padding channels and state columns (P not a multiple of
#: BLOCK_P, N not a power of two: EVEN_P/EVEN_N false, every load and store masked on them).
_MASKED_VARIANTS = tuple(
    Variant(f"{v.name}, P/N padded", v.pointers, {**v.constexprs, "EVEN_P": False, "EVEN_N": False})
    for v in _VARIANTS
)
#: AMD, padded P/N only: the per-element channel/column masks are loop-invariant, so they are
#: hoisted out of the scan and each holds a 64-bit scalar register pair (wave64) through it;
#: with the kernel's ~45 scalar arguments that spills 19-42 SGPRs on gfx90a/gfx942/gfx950
#: (num_warps 8). Open; listed so the compile check shows it. The unpadded shapes above (every
#: real model) compile without spills on AMD.
_KNOWN_FAILURES = {"hip:": "SGPR spills on AMD with padded P/N (masks), open"}

COMPILE_CHECKS = (
    KernelCheck(_ssd_varlen_kernel, OP, _VARIANTS, _check_launch),
    KernelCheck(
        _ssd_varlen_kernel, OP, _MASKED_VARIANTS, _check_launch, known_failures=_KNOWN_FAILURES
    ),
)
