"""The lightning-attention spec: hand-checked cases, invariants, bad input, HF MiniMax oracle."""

from __future__ import annotations

import math

import pytest
import torch

from mamba_backends.reference.lightning import lightning_attention, linear_decode_forward


def _qkv(b: int, h: int, n: int, d: int, e: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, h, n, e, generator=gen, dtype=torch.float64)
    s = torch.rand(h, generator=gen, dtype=torch.float64) * 0.3
    return q, k, v, s


def test_scalar_by_hand_and_block_states() -> None:
    # d = e = 1, q = k = v = 1, decay exp(-ln 2) = 1/2: kv = 1, 1.5, 1.75, 1.875
    ones = torch.ones(1, 1, 4, 1)
    o, kv = lightning_attention(ones, ones, ones, torch.tensor([math.log(2.0)]), block_size=3)
    assert o.flatten().tolist() == pytest.approx([1.0, 1.5, 1.75, 1.875])
    assert kv.shape == (1, 1, 3, 1, 1) and kv.dtype == torch.float32
    # state entering block 0 (zeros), block 1 (after 3 tokens), then the final state
    assert kv.flatten().tolist() == pytest.approx([0.0, 1.75, 1.875])
    # with history 8: kv = 4 + 1 = 5 after one token
    o2, kv2 = lightning_attention(
        ones[:, :, :1],
        ones[:, :, :1],
        ones[:, :, :1],
        torch.tensor([math.log(2.0)]),
        kv_history=torch.full((1, 1, 1, 1), 8.0),
    )
    assert o2.item() == pytest.approx(5.0) and kv2[0, 0, -1].item() == pytest.approx(5.0)


def test_decode_by_hand() -> None:
    cache = torch.zeros(3, 1, 2, 2)
    cache[2] = torch.tensor([[4.0, 0.0], [0.0, 2.0]])
    q = torch.tensor([1.0, 1.0]).view(1, 1, 1, 2)
    k = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    v = torch.tensor([0.0, 3.0]).view(1, 1, 1, 2)
    out = linear_decode_forward(q, k, v, cache, torch.tensor([math.log(2.0)]), torch.tensor([2]))
    # kv = [[2, 3], [0, 1]], o = q @ kv = [2, 4]
    assert out.shape == (1, 2) and out.flatten().tolist() == pytest.approx([2.0, 4.0])
    assert cache[2, 0].tolist() == [[2.0, 3.0], [0.0, 1.0]]
    assert torch.all(cache[:2] == 0)


def test_prefill_then_decode_equals_one_shot_with_canaries() -> None:
    b, h, n, d = 2, 2, 7, 3
    q, k, v, s = _qkv(b, h, n, d, d, seed=1)
    o_all, kv_all = lightning_attention(q, k, v, s)
    o_pre, kv_pre = lightning_attention(q[:, :, :5], k[:, :, :5], v[:, :, :5], s)
    torch.testing.assert_close(o_pre, o_all[:, :, :5])
    # decode the last two tokens through a strided pool with pad/null requests mixed in
    buf = torch.randn(5, h, d, d, dtype=torch.float64)
    pool = buf.transpose(-1, -2).contiguous().transpose(-1, -2)  # column-major per slot
    pool[3] = kv_pre[0, :, -1]
    pool[1] = kv_pre[1, :, -1]
    before = pool.clone()
    slots = torch.tensor([3, -1, 1, 0])
    for t in (5, 6):
        qq = torch.cat([q[:, :, t : t + 1]] * 2)[[0, 1, 1, 0]]
        kk = torch.cat([k[:, :, t : t + 1]] * 2)[[0, 1, 1, 0]]
        vv = torch.cat([v[:, :, t : t + 1]] * 2)[[0, 1, 1, 0]]
        out = linear_decode_forward(qq, kk, vv, pool, s, slots)
        torch.testing.assert_close(out[0], o_all[0, :, t].reshape(-1))
        torch.testing.assert_close(out[2], o_all[1, :, t].reshape(-1))
        assert torch.all(out[1] == 0) and torch.all(out[3] == 0)
    for slot in (0, 2, 4):
        assert torch.equal(pool[slot], before[slot])
    torch.testing.assert_close(pool[3], kv_all[0, :, -1].double())
    torch.testing.assert_close(pool[1], kv_all[1, :, -1].double())


def test_batch_equals_rows_alone_and_history_untouched() -> None:
    q, k, v, s = _qkv(3, 2, 6, 3, 2, seed=2)
    hist = torch.randn(3, 2, 3, 2, dtype=torch.float64)
    before = hist.clone()
    o, kv = lightning_attention(q, k, v, s, block_size=4, kv_history=hist)
    assert torch.equal(hist, before)
    for i in range(3):
        o_i, kv_i = lightning_attention(
            q[i : i + 1],
            k[i : i + 1],
            v[i : i + 1],
            s.view(1, 2, 1, 1),
            block_size=4,
            kv_history=hist[i : i + 1],
        )
        torch.testing.assert_close(o[i], o_i[0])
        torch.testing.assert_close(kv[i], kv_i[0])


def test_bad_input_raises_before_any_write() -> None:
    q, k, v, s = _qkv(2, 2, 1, 3, 3)
    cache = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    before = cache.clone()
    with pytest.raises(ValueError, match="slot_idx"):
        linear_decode_forward(q, k, v, cache, s, torch.tensor([1, 9]))
    with pytest.raises(ValueError, match="slot_idx"):
        linear_decode_forward(q, k, v, cache, s, torch.tensor([2, 2]))  # same slot twice
    with pytest.raises(ValueError, match="slope_rate"):
        linear_decode_forward(q, k, v, cache, s[:1], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="kv_caches"):
        linear_decode_forward(q, k, v, cache[:, :1], s, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="kv_caches"):
        linear_decode_forward(q, k, v, cache[:1].expand(4, 2, 3, 3), s, torch.tensor([1, 2]))
    assert torch.equal(cache, before)
    with pytest.raises(ValueError, match="'ed'"):
        lightning_attention(q, k, v, torch.zeros(3))
    with pytest.raises(ValueError, match="block_size"):
        lightning_attention(q, k, v, s, block_size=0)
    with pytest.raises(ValueError, match="kv_history"):
        lightning_attention(q, k, v, s, kv_history=torch.zeros(2, 2, 3, 4))
    with pytest.raises(TypeError, match="slot_idx"):
        linear_decode_forward(q, k, v, cache, s, torch.tensor([1.0, 2.0]))


# ------------------------------------------------------------------ HF MiniMax oracle


def minimax_layer(block_size: int, heads: int = 2, head_dim: int = 8):
    """HF's MiniMaxLightningAttention with random weights, float64."""
    mm = pytest.importorskip(
        "transformers.models.minimax.modeling_minimax",
        reason="transformers with MiniMax is not installed",
    )
    cfg_mod = pytest.importorskip("transformers.models.minimax.configuration_minimax")
    cfg = cfg_mod.MiniMaxConfig(
        hidden_size=16,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        num_hidden_layers=3,
        block_size=block_size,
        intermediate_size=16,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
    )
    torch.manual_seed(0)
    layer = mm.MiniMaxLightningAttention(cfg, layer_idx=1).double()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return mm, layer


def hf_qkv(layer, x: torch.Tensor):
    b, n, _ = x.shape
    qkv = layer.act_fn(layer.qkv_proj(x)).reshape(b, n, layer.num_attention_heads, -1)
    q, k, v = torch.split(qkv, layer.head_dim, dim=3)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def hf_out(layer, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    b, n, _ = x.shape
    o = layer.norm(o.transpose(1, 2).reshape(b, n, -1))
    return layer.out_proj(torch.sigmoid(layer.output_gate(x)) * o)


def test_spec_matches_hf_minimax() -> None:
    mm, layer = minimax_layer(block_size=4)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    with torch.no_grad():
        ref, ref_kv = layer(x, None, None)
        q, k, v = hf_qkv(layer, x)
        o, kv = lightning_attention(q, k, v, layer.slope_rate.view(-1), block_size=4)
        torch.testing.assert_close(hf_out(layer, x, o), ref)
        torch.testing.assert_close(kv[:, :, -1], ref_kv.float())
        # decode: HF's cached token loop vs linear_decode_forward
        cache = mm.MiniMaxCache()
        cache.set_linear_cache(1, ref_kv.clone())
        x1 = torch.randn(2, 1, 16, dtype=torch.float64)
        ref1, _ = layer(x1, None, None, cache=cache)
        q1, k1, v1 = hf_qkv(layer, x1)
        pool = torch.zeros(3, 2, 8, 8, dtype=torch.float64)
        pool[1:] = ref_kv
        o1 = linear_decode_forward(
            q1, k1, v1, pool, layer.slope_rate.view(-1), torch.tensor([1, 2])
        )
        torch.testing.assert_close(hf_out(layer, x1, o1.view(2, 1, 2, 8).transpose(1, 2)), ref1)
