"""CPU GDN kernels against the spec (and HF's torch paths at sizes the spec is too slow for)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from cpu_checks import CountOps, close

from mamba_backends import tuning
from mamba_backends.reference import gdn as spec
from mamba_backends_cpu.native import gdn as _native_gdn
from mamba_backends_cpu.ops import gdn as cpu

#: Every test runs on the fused C kernels and on the PyTorch fallback.
pytestmark = pytest.mark.usefixtures("path")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def test_native_builds_here(path: str) -> None:
    """With a compiler the kernels must build (a build failure would silently fall back)."""
    assert _native_gdn.available() == (path == "native")


def make(
    T: int, H: int, HV: int, K: int, V: int, dtype: torch.dtype, *, l2: bool, seed: int, B: int = 1
):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    if not l2:  # keep the delta rule contractive without the in-kernel norm
        q, k = (torch.nn.functional.normalize(x, dim=-1) for x in (q, k))
    v = torch.randn(B, T, HV, V, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, generator=gen) + 2)
    beta = torch.rand(B, T, HV, generator=gen)
    return [x.to(dtype) for x in (q, k, v)] + [g, beta.to(dtype)]


# ------------------------------------------------------------------ gating


@pytest.mark.parametrize("dtype", DTYPES)
def test_gating_matches_spec(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(7, 6, generator=gen) * 10).to(dtype)  # some entries above the threshold
    b = torch.randn(7, 6, generator=gen).to(dtype)
    A_log, dt_bias = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    g1, b1 = cpu.fused_gdn_gating(A_log, a, b, dt_bias, beta=1.5, threshold=10.0)
    g2, b2 = spec.fused_gdn_gating(A_log, a, b, dt_bias, beta=1.5, threshold=10.0)
    assert g1.dtype == g2.dtype == torch.float32 and b1.dtype == b2.dtype == dtype
    close(g1, g2, torch.float32)
    close(b1, b2, dtype)


# ------------------------------------------------------------------ chunked prefill


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("l2", [True, False])
def test_chunk_matches_spec_varlen_gva(
    dtype: torch.dtype, state_dtype: torch.dtype, l2: bool
) -> None:
    H, HV, K, V = 2, 4, 16, 8
    cu = torch.tensor([0, 1, 64, 64, 127, 192], dtype=torch.int32)  # T = 1, 63, 0, 63, 65
    q, k, v, g, beta = make(192, H, HV, K, V, dtype, l2=l2, seed=1)
    h0 = (torch.randn(5, HV, V, K) * 0.5).to(state_dtype)
    kw: dict[str, Any] = dict(
        initial_state=h0, output_final_state=True, cu_seqlens=cu, use_qk_l2norm_in_kernel=l2
    )
    o1, f1 = cpu.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    o2, f2 = spec.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    assert o1.dtype == dtype and f1 is not None and f1.dtype == torch.float32
    assert f2 is not None
    close(o1, o2, dtype)
    close(f1, f2, dtype)


@pytest.mark.parametrize("bf16_gemms", [True, False])
def test_chunk_bf16_gemm_policy(bf16_gemms: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 inputs: bf16 GEMM operands (default) stay within bf16 tolerance; with the policy
    off every product is fp32 and the error is the output rounding alone."""
    monkeypatch.setenv("MAMBA_BACKENDS_CPU_NATIVE", "0")  # a policy of the PyTorch path
    q, k, v, g, beta = make(150, 2, 4, 32, 16, torch.bfloat16, l2=True, seed=9)
    h0 = torch.randn(1, 4, 16, 32) * 0.5
    kw: dict[str, Any] = dict(
        initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    cfg = {**cpu._prefill_config(torch.bfloat16, 32, 16), "bf16_gemms": bf16_gemms}
    with tuning.override("chunk_gated_delta_rule", cfg, device="cpu"):
        o1, f1 = cpu.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    o2, f2 = spec.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    assert f1 is not None and f2 is not None
    tol = torch.bfloat16 if bf16_gemms else torch.float16  # fp32 products: ~1 bf16 rounding
    close(o1, o2, tol)
    close(f1, f2, torch.bfloat16 if bf16_gemms else torch.float32)


def test_chunk_batch_rows_core_attn_out_no_state_fp64() -> None:
    q, k, v, g, beta = make(70, 1, 1, 8, 8, torch.float64, l2=True, seed=2, B=3)
    out = torch.empty(3, 70, 1, 8, dtype=torch.float64)
    o1, f1 = cpu.chunk_gated_delta_rule(
        q, k, v, g, beta, scale=0.3, use_qk_l2norm_in_kernel=True, core_attn_out=out
    )
    o2, _ = spec.chunk_gated_delta_rule(q, k, v, g, beta, scale=0.3, use_qk_l2norm_in_kernel=True)
    assert o1 is out and f1 is None
    close(o1, o2, torch.float64)


# ------------------------------------------------------------------ recurrent / decode


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_decode_matches_spec_with_pad_null_and_strided_pool(
    dtype: torch.dtype, state_dtype: torch.dtype
) -> None:
    H, HV, K, V, N = 2, 4, 16, 8, 5
    q, k, v, g, beta = make(N, H, HV, K, V, dtype, l2=True, seed=3)
    buf = (torch.randn(8, HV, K, V) * 0.5).to(state_dtype)
    idx = torch.tensor([6, -1, 2, 0, 3], dtype=torch.int32)
    pools = [buf.clone().transpose(-1, -2) for _ in range(2)]  # strided [slots, HV, V, K]
    before = pools[0].clone()
    outs = []
    for mod, pool in zip((cpu, spec), pools, strict=True):
        o, ret = mod.fused_recurrent_gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=pool,
            cu_seqlens=torch.arange(N + 1),
            ssm_state_indices=idx,
            use_qk_l2norm_in_kernel=True,
        )
        assert ret is pool and o.dtype == dtype
        outs.append(o)
    close(outs[0], outs[1], dtype)
    close(pools[0], pools[1], state_dtype if state_dtype != torch.float32 else dtype)
    for slot in (0, 1, 4, 5, 7):
        assert torch.equal(pools[0][slot], before[slot])
    assert torch.all(outs[0][:, 1] == 0) and torch.all(outs[0][:, 3] == 0)


def test_multi_token_spec_decode_num_accepted_headwise_beta() -> None:
    H, HV, K, V = 1, 2, 8, 4
    q, k, v, g, _ = make(6, H, HV, K, V, torch.float32, l2=True, seed=4)
    beta = torch.rand(1, 6, HV, V)  # head-wise beta
    cu = torch.tensor([0, 3, 3, 6])
    idx = torch.tensor([[1, 2, 3], [7, 8, 9], [4, -1, 5]], dtype=torch.int64)
    acc = torch.tensor([1, 2, 3])
    pools = [torch.randn(10, HV, V, K) for _ in range(2)]
    pools[1] = pools[0].clone()
    before = pools[0].clone()
    outs = []
    for mod, pool in zip((cpu, spec), pools, strict=True):
        o, _ = mod.fused_recurrent_gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=pool,
            cu_seqlens=cu,
            ssm_state_indices=idx,
            num_accepted_tokens=acc,
            use_qk_l2norm_in_kernel=True,
        )
        outs.append(o)
    close(outs[0], outs[1], torch.float32)
    close(pools[0], pools[1], torch.float32)
    for slot in (0, 6, 7, 8, 9):  # unused, or an empty sequence's
        assert torch.equal(pools[0][slot], before[slot])


@pytest.mark.parametrize("beta_none", [True, False])
def test_not_inplace_per_token_states(beta_none: bool) -> None:
    q, k, v, g, beta = make(5, 1, 2, 8, 4, torch.bfloat16, l2=True, seed=5, B=2)
    h0 = torch.randn(2, 2, 4, 8, dtype=torch.bfloat16)
    before = h0.clone()
    b = None if beta_none else beta
    o1, s1 = cpu.fused_recurrent_gated_delta_rule(
        q, k, v, g, b, initial_state=h0, inplace_final_state=False
    )
    o2, s2 = spec.fused_recurrent_gated_delta_rule(
        q, k, v, g, b, initial_state=h0, inplace_final_state=False
    )
    assert torch.equal(h0, before)
    assert s1.shape == (10, 2, 4, 8) and s1.dtype == torch.bfloat16
    close(o1, o2, torch.bfloat16)
    close(s1, s2, torch.bfloat16)


# ------------------------------------------------------------------ invariants on CPU


def test_split_500_prefill_pieces_then_decode_equals_one_shot() -> None:
    H, HV, K, V = 2, 4, 32, 16
    q, k, v, g, beta = make(500, H, HV, K, V, torch.float32, l2=True, seed=6)
    o_all, f_all = cpu.chunk_gated_delta_rule(
        q, k, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    state = None
    pieces = []
    for s, e in ((0, 137), (137, 200), (200, 490)):
        o, state = cpu.chunk_gated_delta_rule(
            q[:, s:e],
            k[:, s:e],
            v[:, s:e],
            g[:, s:e],
            beta[:, s:e],
            initial_state=state,
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )
        pieces.append(o)
    assert state is not None and f_all is not None
    pool = torch.zeros(3, HV, V, K)
    pool[1] = state[0]
    idx = torch.tensor([1])
    for t in range(490, 500):
        sl = slice(t, t + 1)
        o, _ = cpu.fused_recurrent_gated_delta_rule(
            q[:, sl],
            k[:, sl],
            v[:, sl],
            g[:, sl],
            beta[:, sl],
            initial_state=pool,
            ssm_state_indices=idx,
            use_qk_l2norm_in_kernel=True,
        )
        pieces.append(o)
    close(torch.cat(pieces, dim=1), o_all, torch.float32)
    close(pool[1], f_all[0], torch.float32)
    assert torch.all(pool[0] == 0) and torch.all(pool[2] == 0)


def test_cpu_errors_before_any_write() -> None:
    q, k, v, g, beta = make(2, 1, 2, 4, 3, torch.float32, l2=True, seed=7)
    pool = torch.randn(3, 2, 3, 4)
    before = pool.clone()
    qa, ka, va, ga, ba = (x.transpose(0, 1) for x in (q, k, v, g, beta))
    with pytest.raises(ValueError, match="ssm_state_indices"):
        cpu.fused_recurrent_gated_delta_rule(
            qa, ka, va, ga, ba, initial_state=pool, ssm_state_indices=torch.tensor([1, 1])
        )
    with pytest.raises(ValueError, match="initial_state"):
        cpu.fused_recurrent_gated_delta_rule(
            qa, ka, va, ga, ba, initial_state=pool[:, :1], ssm_state_indices=torch.tensor([1, 2])
        )
    with pytest.raises(ValueError, match="beta"):
        cpu.chunk_gated_delta_rule(q, k, v, g, beta[..., None].expand(1, 2, 2, 3))
    assert torch.equal(pool, before)


# ------------------------------------------------------------------ HF transformers oracle


@pytest.mark.parametrize("l2", [True, False])
def test_cpu_matches_hf_qwen3_next_at_500(l2: bool) -> None:
    hf = pytest.importorskip(
        "transformers.models.qwen3_next.modeling_qwen3_next",
        reason="transformers with Qwen3-Next is not installed",
    )
    H, HV, K, V = 2, 4, 32, 32
    q, k, v, g, beta = make(500, H, HV, K, V, torch.float32, l2=l2, seed=8, B=2)
    h0 = torch.randn(2, HV, V, K) * 0.3
    o1, f1 = cpu.chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2
    )
    o2, f2 = hf.torch_chunk_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        initial_state=h0.transpose(-1, -2),
        output_final_state=True,
        use_qk_l2norm_in_kernel=l2,
    )
    assert f1 is not None
    close(o1, o2, torch.float32)
    close(f1, f2.transpose(-1, -2), torch.float32)
    # decode one token with HF's recurrent path
    sl = slice(0, 1)
    pool = f1.clone()
    o3, _ = cpu.fused_recurrent_gated_delta_rule(
        q[:, sl],
        k[:, sl],
        v[:, sl],
        g[:, sl],
        beta[:, sl],
        initial_state=pool,
        use_qk_l2norm_in_kernel=l2,
    )
    o4, f4 = hf.torch_recurrent_gated_delta_rule(
        q[:, sl],
        k[:, sl],
        v[:, sl],
        g[:, sl],
        beta[:, sl],
        initial_state=f2,
        output_final_state=True,
        use_qk_l2norm_in_kernel=l2,
    )
    close(o3, o4, torch.float32)
    close(pool, f4.transpose(-1, -2), torch.float32)


# ------------------------------------------------------------------ kernel-path coverage


def test_long_speculative_and_per_token_states_partial_value_block() -> None:
    """More tokens per sequence than the decode kernel takes (the tile kernel runs) with
    per-token state slots (2-D indices) and per-token state outputs; V = 40 is not a
    multiple of the 32-row block."""
    H, HV, K, V, L = 1, 2, 16, 40, 12
    q, k, v, g, _ = make(2 * L, H, HV, K, V, torch.float32, l2=True, seed=11)
    beta = torch.rand(1, 2 * L, HV, V)
    cu = torch.tensor([0, L, 2 * L])
    idx = torch.cat([torch.arange(1, 13), torch.arange(13, 25)]).view(2, L)
    idx[1, 3] = -1  # a pad slot mid-sequence: that state is not written
    acc = torch.tensor([1, 2])
    pools = [torch.randn(26, HV, V, K) * 0.5 for _ in range(2)]
    pools[1].copy_(pools[0])
    before = pools[0].clone()
    outs = []
    for mod, pool in zip((cpu, spec), pools, strict=True):
        kw: dict[str, Any] = dict(cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
        o, _ = mod.fused_recurrent_gated_delta_rule(
            q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx,
            num_accepted_tokens=acc, **kw,
        )  # fmt: skip
        o2, st = mod.fused_recurrent_gated_delta_rule(
            q, k, v, g, beta, initial_state=before[[1, 14]], inplace_final_state=False, **kw
        )
        outs.append((o, o2, st))
    for a, e in zip(outs[0], outs[1], strict=True):
        close(a, e, torch.float32)
    close(pools[0], pools[1], torch.float32)
    assert torch.equal(pools[0][0], before[0]) and torch.equal(pools[0][25], before[25])


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_short_sequences_strided_inputs_and_output(dtype: torch.dtype) -> None:
    """Sequences of at most 8 tokens (the decode kernel runs, one empty: its state passes
    through), q/k/v as strided views of one mixed projection, fp16 strided initial state,
    a non-contiguous core_attn_out."""
    H, HV, K, V = 2, 4, 16, 8
    T = 19
    gen = torch.Generator().manual_seed(12)
    mixed = torch.randn(1, T, 2 * H * K + HV * V, generator=gen).to(dtype)
    q = mixed[..., : H * K].unflatten(-1, (H, K))
    k = mixed[..., H * K : 2 * H * K].unflatten(-1, (H, K))
    v = mixed[..., 2 * H * K :].unflatten(-1, (HV, V))
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, HV, generator=gen) + 2)
    beta = torch.rand(1, T, HV, generator=gen).to(dtype)
    cu = torch.tensor([0, 3, 3, 11, 19])
    h0 = (torch.randn(4, HV, K, V, generator=gen) * 0.5).to(torch.float16).transpose(-1, -2)
    out = torch.zeros(1, T, V, HV, dtype=dtype).transpose(-1, -2)
    kw: dict[str, Any] = dict(
        initial_state=h0, output_final_state=True, cu_seqlens=cu, use_qk_l2norm_in_kernel=True
    )
    o1, f1 = cpu.chunk_gated_delta_rule(q, k, v, g, beta, core_attn_out=out, **kw)
    o2, f2 = spec.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    assert o1 is out and f1 is not None and f2 is not None
    close(o1, o2, dtype)
    close(f1, f2, dtype)
    assert torch.equal(f1[1], h0[1].float())


def test_decay_underflow_and_zero_decay() -> None:
    """A long run of strong decay (the product of decays falls below fp32's range) and
    tokens whose decay is exactly 0 in fp32 (the state is wiped)."""
    H, HV, K, V, T = 1, 2, 16, 32, 300
    q, k, v, _, beta = make(T, H, HV, K, V, torch.float32, l2=True, seed=13)
    g = torch.full((1, T, HV), -0.4)
    g[:, 150, 0] = -200.0  # exp underflows to 0
    h0 = torch.randn(1, HV, V, K)
    kw: dict[str, Any] = dict(
        initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    o1, f1 = cpu.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    o2, f2 = spec.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    assert f1 is not None and f2 is not None
    close(o1, o2, torch.float32)
    close(f1, f2, torch.float32)
    # the same through the recurrent op
    pool = h0.clone()
    o3, _ = cpu.fused_recurrent_gated_delta_rule(
        q, k, v, g, beta, initial_state=pool, use_qk_l2norm_in_kernel=True
    )
    close(o3, o2, torch.float32)
    close(pool, f2, torch.float32)


def test_native_decode_dispatches_no_reduction_copy_or_scalar_read(path: str) -> None:
    """vLLM's decode step ([1, T] tensors, int32 offsets and slots, fp32 pool) reaches the C
    kernel with the output's allocation and at most one view: the finiteness test runs in the
    kernel (no torch sums, no scalar reads), the sequence table is a host array, the inputs
    are read in place. Each ATen op costs tens of microseconds with cold caches."""
    if path != "native":
        pytest.skip("the native path's dispatch count")
    H, HV, K, V, N = 2, 4, 16, 8, 5
    q, k, v, g, beta = make(N, H, HV, K, V, torch.bfloat16, l2=True, seed=5)
    pool = torch.randn(8, HV, V, K) * 0.5
    args = dict(initial_state=pool, inplace_final_state=True,
                cu_seqlens=torch.arange(N + 1, dtype=torch.int32),
                ssm_state_indices=torch.tensor([6, -1, 2, 0, 3], dtype=torch.int32),
                use_qk_l2norm_in_kernel=True)  # fmt: skip
    cpu.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **args)
    with CountOps() as seen:
        cpu.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **args)
    assert seen.ops[0] == "zeros" and len(seen.ops) <= 2 and set(seen.ops) <= {"zeros", "view"}
