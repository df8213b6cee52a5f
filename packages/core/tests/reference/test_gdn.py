"""The GDN spec: hand-checked cases, serving invariants, bad input, and HF's torch paths."""

from __future__ import annotations

import math

import pytest
import torch

from mamba_backends.reference.gdn import (
    chunk_gated_delta_rule,
    fused_gdn_gating,
    fused_recurrent_gated_delta_rule,
)


def _inputs(T: int, H: int, HV: int, K: int, V: int, seed: int = 0, B: int = 1):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    k = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    v = torch.randn(B, T, HV, V, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, T, HV, generator=gen, dtype=torch.float64) * 0.5
    beta = torch.rand(B, T, HV, generator=gen, dtype=torch.float64)
    return q, k, v, g, beta


# ------------------------------------------------------------------ hand-checked


def test_gating_hand_values() -> None:
    A_log = torch.tensor([0.0, math.log(2.0)])
    dt_bias = torch.tensor([0.0, 0.0])
    a = torch.tensor([[0.0, 30.0]])  # 30 > threshold 20: softplus(x) = x
    b = torch.tensor([[0.0, 100.0]])
    g, beta = fused_gdn_gating(A_log, a, b, dt_bias)
    assert g.shape == (1, 1, 2) and g.dtype == torch.float32
    assert beta.shape == (1, 1, 2) and beta.dtype == b.dtype
    assert g[0, 0, 0].item() == pytest.approx(-math.log(2.0), rel=1e-6)
    assert g[0, 0, 1].item() == pytest.approx(-60.0, rel=1e-6)
    assert beta[0, 0].tolist() == pytest.approx([0.5, 1.0])
    # softplus beta/threshold: log(1 + e^(2*1)) / 2 with beta=2
    g2, _ = fused_gdn_gating(A_log[:1], torch.tensor([[1.0]]), b[:, :1], dt_bias[:1], beta=2.0)
    assert g2.item() == pytest.approx(-math.log1p(math.exp(2.0)) / 2, rel=1e-6)


def test_scalar_recurrence_by_hand() -> None:
    # H = HV = K = V = 1, q = k = 1, scale = 1:
    # t1: S = 0,   d = 1 * (2 - 0)   = 2, S = 2, o = 2
    # t2: S = 2/2, d = 0.5 * (3 - 1) = 1, S = 2, o = 2
    # t3: S = 2,   d = 0 * (...)     = 0, S = 2, o = 2 * q = -2
    q = torch.tensor([1.0, 1.0, -1.0]).view(1, 3, 1, 1)
    k = torch.ones(1, 3, 1, 1)
    v = torch.tensor([2.0, 3.0, 9.0]).view(1, 3, 1, 1)
    g = torch.tensor([0.0, math.log(0.5), 0.0]).view(1, 3, 1)
    beta = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1)
    o, final = chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, output_final_state=True)
    assert o.flatten().tolist() == pytest.approx([2.0, 2.0, -2.0])
    assert final is not None and final.flatten().tolist() == pytest.approx([2.0])
    o2, state = fused_recurrent_gated_delta_rule(
        q, k, v, g, beta, scale=1.0, initial_state=torch.zeros(1, 1, 1, 1)
    )
    assert o2.flatten().tolist() == pytest.approx([2.0, 2.0, -2.0])
    assert state.flatten().tolist() == pytest.approx([2.0])


def test_state_layout_is_hv_v_k() -> None:
    # one token, zero start, beta = 1, g = 0: S = outer(v, k), stored [HV, V, K]
    k = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 3)
    v = torch.tensor([5.0, 7.0]).view(1, 1, 1, 2)
    q = k.clone()
    _, final = chunk_gated_delta_rule(
        q, k, v, torch.zeros(1, 1, 1), torch.ones(1, 1, 1), output_final_state=True
    )
    assert final is not None and final.shape == (1, 1, 2, 3)
    assert final[0, 0].tolist() == [[5.0, 0.0, 0.0], [7.0, 0.0, 0.0]]


def test_gva_maps_heads_by_block() -> None:
    H, HV = 2, 4
    q, k, v, g, beta = _inputs(5, H, HV, 4, 3)
    q[:, :, 1] = 0.0  # q head 1 serves value heads 2, 3 (block mapping hv // 2)
    o, _ = chunk_gated_delta_rule(q, k, v, g, beta)
    assert torch.all(o[:, :, 2:] == 0)
    assert torch.all(o[:, :, :2].abs().sum((0, 1, 3)) > 0)


def test_default_scale_and_l2norm() -> None:
    q, k, v, g, beta = _inputs(4, 1, 1, 4, 2)
    o_def, _ = chunk_gated_delta_rule(q, k, v, g, beta)
    o_expl, _ = chunk_gated_delta_rule(q, k, v, g, beta, scale=4**-0.5)
    torch.testing.assert_close(o_def, o_expl, rtol=0, atol=0)
    nq = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    nk = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    o_in, _ = chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    o_pre, _ = chunk_gated_delta_rule(nq, nk, v, g, beta)
    torch.testing.assert_close(o_in, o_pre)


# ------------------------------------------------------------------ invariants


def test_batch_equals_sequences_alone() -> None:
    H, HV, K, V = 1, 2, 4, 3
    q, k, v, g, beta = _inputs(12, H, HV, K, V, seed=1)
    cu = torch.tensor([0, 5, 5, 12], dtype=torch.int32)
    h0 = torch.randn(3, HV, V, K, dtype=torch.float64)
    o, final = chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu
    )
    assert final is not None
    for n, (s, e) in enumerate([(0, 5), (5, 5), (5, 12)]):
        o_n, f_n = chunk_gated_delta_rule(
            q[:, s:e],
            k[:, s:e],
            v[:, s:e],
            g[:, s:e],
            beta[:, s:e],
            initial_state=h0[n : n + 1],
            output_final_state=True,
        )
        assert f_n is not None
        torch.testing.assert_close(o[:, s:e], o_n)
        torch.testing.assert_close(final[n], f_n[0])
    torch.testing.assert_close(final[1], h0[1].float())  # empty sequence keeps its state


def test_split_prefill_then_decode_equals_one_shot() -> None:
    H, HV, K, V = 1, 2, 4, 3
    q, k, v, g, beta = _inputs(9, H, HV, K, V, seed=2)
    o_all, f_all = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    assert f_all is not None
    _, f1 = chunk_gated_delta_rule(
        q[:, :4], k[:, :4], v[:, :4], g[:, :4], beta[:, :4], output_final_state=True
    )
    o2, f2 = chunk_gated_delta_rule(
        q[:, 4:6],
        k[:, 4:6],
        v[:, 4:6],
        g[:, 4:6],
        beta[:, 4:6],
        initial_state=f1,
        output_final_state=True,
    )
    # the chunk op returns float32 final states (vLLM), so the split loses fp64 exactness
    torch.testing.assert_close(o2, o_all[:, 4:6], rtol=1e-5, atol=1e-6)
    pool = torch.zeros(3, HV, V, K, dtype=torch.float64)
    assert f2 is not None
    pool[2] = f2[0]
    idx = torch.tensor([2])
    for t in range(6, 9):
        o_t, _ = fused_recurrent_gated_delta_rule(
            q[:, t : t + 1],
            k[:, t : t + 1],
            v[:, t : t + 1],
            g[:, t : t + 1],
            beta[:, t : t + 1],
            initial_state=pool,
            ssm_state_indices=idx,
        )
        torch.testing.assert_close(o_t, o_all[:, t : t + 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pool[2], f_all[0].double(), rtol=1e-5, atol=1e-6)


def test_decode_pad_null_canaries_and_strided_pool() -> None:
    H, HV, K, V = 1, 2, 4, 3
    N = 4
    q, k, v, g, beta = _inputs(N, H, HV, K, V, seed=3)
    args = [x.transpose(0, 1) for x in (q, k, v, g, beta)]  # [N, 1, ...]: one token each
    # a strided pool: the [slots, HV, V, K] view of a [slots, HV, K, V] buffer
    buf = torch.randn(6, HV, K, V, dtype=torch.float64)
    pool = buf.transpose(-1, -2)
    before = pool.clone()
    idx = torch.tensor([3, -1, 0, 5])
    o, ret = fused_recurrent_gated_delta_rule(*args, initial_state=pool, ssm_state_indices=idx)
    assert ret is pool
    for slot in (0, 1, 2, 4):
        assert torch.equal(pool[slot], before[slot])  # untouched, bit for bit
    assert torch.all(o[1] == 0) and torch.all(o[2] == 0)
    for n, slot in ((0, 3), (3, 5)):
        ref = before[slot : slot + 1].clone()
        o_n, _ = fused_recurrent_gated_delta_rule(*(a[n : n + 1] for a in args), initial_state=ref)
        torch.testing.assert_close(o[n], o_n[0])
        torch.testing.assert_close(pool[slot], ref[0])


def test_spec_decode_per_token_slots_and_num_accepted() -> None:
    H, HV, K, V = 1, 1, 3, 2
    q, k, v, g, beta = _inputs(5, H, HV, K, V, seed=4)
    cu = torch.tensor([0, 3, 5])
    pool = torch.randn(9, HV, V, K, dtype=torch.float64)
    before = pool.clone()
    idx = torch.tensor([[1, 2, 3], [4, 5, 0]])
    acc = torch.tensor([2, 1])  # seq 0 starts from slot idx[0, 1] = 2, seq 1 from 4
    o, _ = fused_recurrent_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        initial_state=pool,
        cu_seqlens=cu,
        ssm_state_indices=idx,
        num_accepted_tokens=acc,
    )
    # per-token states, from the non-inplace path (which leaves its source untouched)
    src = torch.stack([before[2], before[4]])
    o_ref, per_tok = fused_recurrent_gated_delta_rule(
        q, k, v, g, beta, initial_state=src.clone(), inplace_final_state=False, cu_seqlens=cu
    )
    torch.testing.assert_close(o, o_ref)
    assert per_tok.shape == (5, HV, V, K)
    for t, slot in enumerate([1, 2, 3, 4, 5]):
        torch.testing.assert_close(pool[slot], per_tok[t])
    for slot in (0, 6, 7, 8):
        assert torch.equal(pool[slot], before[slot])


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_before_any_write() -> None:
    q, k, v, g, beta = _inputs(2, 1, 2, 4, 3)
    pool = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    before = pool.clone()
    idx = torch.tensor([1, 2])
    args = [x.transpose(0, 1) for x in (q, k, v, g, beta)]
    with pytest.raises(ValueError, match="ssm_state_indices"):
        fused_recurrent_gated_delta_rule(
            *args, initial_state=pool, ssm_state_indices=torch.tensor([1, 7])
        )
    with pytest.raises(ValueError, match="'g'"):
        fused_recurrent_gated_delta_rule(
            args[0],
            args[1],
            args[2],
            args[3][:, :, :1],
            args[4],
            initial_state=pool,
            ssm_state_indices=idx,
        )
    with pytest.raises(ValueError, match="'v'"):
        chunk_gated_delta_rule(
            q.repeat(1, 1, 2, 1), k.repeat(1, 1, 2, 1), v[:, :, :1].repeat(1, 1, 3, 1), g, beta
        )  # HV=3 is not a multiple of H=2
    assert torch.equal(pool, before)
    with pytest.raises(ValueError, match="initial_state"):
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(2, 2, 3, 4))
    with pytest.raises(ValueError, match="cu_seqlens"):
        chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="scale"):
        chunk_gated_delta_rule(q, k, v, g, beta, scale=-1.0)
    with pytest.raises(TypeError, match="'k'"):
        chunk_gated_delta_rule(q, k.float(), v, g, beta)
    with pytest.raises(ValueError, match="num_accepted_tokens"):
        fused_recurrent_gated_delta_rule(
            *args,
            initial_state=pool,
            ssm_state_indices=idx,
            num_accepted_tokens=torch.tensor([1, 1]),
        )
    with pytest.raises(ValueError, match="initial_state"):
        fused_recurrent_gated_delta_rule(*args)  # in place needs a state
    with pytest.raises(ValueError, match="'a'"):
        fused_gdn_gating(torch.zeros(2), torch.zeros(3), torch.zeros(3), torch.zeros(2))


# ------------------------------------------------------------------ HF transformers oracle


def _hf():
    return pytest.importorskip(
        "transformers.models.qwen3_next.modeling_qwen3_next",
        reason="transformers with Qwen3-Next is not installed",
    )


@pytest.mark.parametrize("l2", [True, False])
def test_spec_matches_hf_torch_paths(l2: bool) -> None:
    hf = _hf()
    H, HV, K, V, T = 2, 4, 8, 6, 70  # two HF chunks of 64, GVA
    q, k, v, g, beta = _inputs(T, H, HV, K, V, seed=5)
    h0 = torch.randn(1, HV, V, K, dtype=torch.float64) * 0.3
    if not l2:
        k = torch.nn.functional.normalize(k, dim=-1)
    o, final = chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2
    )
    h0_hf = h0.transpose(-1, -2).float()  # HF keeps [B, HV, K, V]
    o_c, f_c = hf.torch_chunk_gated_delta_rule(
        q.float(),
        k.float(),
        v.float(),
        g.float(),
        beta.float(),
        initial_state=h0_hf,
        output_final_state=True,
        use_qk_l2norm_in_kernel=l2,
    )
    o_r, f_r = hf.torch_recurrent_gated_delta_rule(
        q.float(),
        k.float(),
        v.float(),
        g.float(),
        beta.float(),
        initial_state=h0_hf,
        output_final_state=True,
        use_qk_l2norm_in_kernel=l2,
    )
    assert final is not None
    for o_hf, f_hf in ((o_c, f_c), (o_r, f_r)):
        torch.testing.assert_close(o.float(), o_hf, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(final, f_hf.transpose(-1, -2), rtol=1e-4, atol=1e-4)
