"""CPU lightning-attention kernels against the spec and HF's MiniMax layer."""

from __future__ import annotations

import pytest
import torch
from cpu_checks import close

from mamba_backends import tuning
from mamba_backends.reference import lightning as spec
from mamba_backends_cpu.ops import lightning as cpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(b: int, h: int, n: int, d: int, e: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=gen) * d**-0.5 for _ in range(2))
    v = torch.randn(b, h, n, e, generator=gen)
    s = torch.rand(h, generator=gen) * 0.2
    return q.to(dtype), k.to(dtype), v.to(dtype), s


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 63, 130])
@pytest.mark.parametrize("block_size", [256, 64, 48])
def test_prefill_matches_spec(dtype: torch.dtype, n: int, block_size: int) -> None:
    q, k, v, s = make(2, 3, n, 16, 8, dtype, seed=n)
    hist = torch.randn(2, 3, 16, 8)
    before = hist.clone()
    o1, kv1 = cpu.lightning_attention(q, k, v, s, block_size=block_size, kv_history=hist)
    o2, kv2 = spec.lightning_attention(q, k, v, s, block_size=block_size, kv_history=hist)
    assert torch.equal(hist, before)
    assert o1.dtype == dtype and kv1.dtype == torch.float32 and kv1.shape == kv2.shape
    close(o1, o2, dtype)
    close(kv1, kv2, torch.float32 if dtype == torch.float32 else dtype)


def test_prefill_no_history_slopes_4d_fp64() -> None:
    q, k, v, s = make(1, 2, 70, 8, 8, torch.float64, seed=1)
    o1, kv1 = cpu.lightning_attention(q, k, v, s.view(1, 2, 1, 1).double())
    o2, kv2 = spec.lightning_attention(q, k, v, s.double())
    close(o1, o2, torch.float64)
    close(kv1, kv2, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_decode_matches_spec_pad_null_strided(dtype: torch.dtype, cache_dtype: torch.dtype) -> None:
    B, H, D = 5, 3, 16
    q, k, v, s = make(B, H, 1, D, D, dtype, seed=2)
    buf = torch.randn(7, H, D, D).to(cache_dtype)
    caches = [buf.clone().transpose(-1, -2) for _ in range(2)]  # strided views
    before = caches[0].clone()
    slots = torch.tensor([4, -1, 1, 0, 6], dtype=torch.int32)
    o1 = cpu.linear_decode_forward(q, k, v, caches[0], s, slots)
    o2 = spec.linear_decode_forward(q, k, v, caches[1], s, slots)
    assert o1.shape == (B, H * D) and o1.dtype == dtype
    close(o1, o2, dtype)
    close(caches[0], caches[1], cache_dtype if cache_dtype != torch.float32 else dtype)
    for slot in (0, 2, 3, 5):
        assert torch.equal(caches[0][slot], before[slot])
    assert torch.all(o1[1] == 0) and torch.all(o1[3] == 0)


def test_split_prefill_then_decode_equals_one_shot() -> None:
    b, h, d = 2, 2, 16
    q, k, v, s = make(b, h, 300, d, d, torch.float32, seed=3)
    o_all, kv_all = cpu.lightning_attention(q, k, v, s)
    o_a, kv_a = cpu.lightning_attention(q[:, :, :100], k[:, :, :100], v[:, :, :100], s)
    o_b, kv_b = cpu.lightning_attention(
        q[:, :, 100:297], k[:, :, 100:297], v[:, :, 100:297], s, kv_history=kv_a[:, :, -1]
    )
    pool = torch.zeros(4, h, d, d)
    pool[2], pool[3] = kv_b[0, :, -1], kv_b[1, :, -1]
    outs = [o_a, o_b]
    for t in range(297, 300):
        o = cpu.linear_decode_forward(
            q[:, :, t : t + 1],
            k[:, :, t : t + 1],
            v[:, :, t : t + 1],
            pool,
            s,
            torch.tensor([2, 3]),
        )
        outs.append(o.view(b, h, 1, d))
    close(torch.cat(outs, dim=2), o_all, torch.float32)
    close(pool[2:], kv_all[:, :, -1], torch.float32)


def test_cpu_errors_before_any_write() -> None:
    q, k, v, s = make(2, 2, 1, 4, 4, torch.float32)
    cache = torch.randn(3, 2, 4, 4)
    before = cache.clone()
    with pytest.raises(ValueError, match="slot_idx"):
        cpu.linear_decode_forward(q, k, v, cache, s, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="'v'"):
        cpu.linear_decode_forward(q, k, v[..., :3], cache, s, torch.tensor([1, 2]))
    assert torch.equal(cache, before)


def test_cpu_matches_hf_minimax() -> None:
    mm = pytest.importorskip(
        "transformers.models.minimax.modeling_minimax",
        reason="transformers with MiniMax is not installed",
    )
    from transformers.models.minimax.configuration_minimax import MiniMaxConfig

    cfg = MiniMaxConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        num_hidden_layers=2,
        block_size=64,
        intermediate_size=32,
        layer_types=["linear_attention", "full_attention"],
    )
    torch.manual_seed(0)
    layer = mm.MiniMaxLightningAttention(cfg, layer_idx=0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 150, 32)

    def qkv(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = layer.act_fn(layer.qkv_proj(xx)).reshape(xx.shape[0], xx.shape[1], 4, 48)
        q, k, v = (t.transpose(1, 2) for t in torch.split(y, 16, dim=3))
        return q, k, v

    def finish(xx: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = layer.norm(o.transpose(1, 2).reshape(xx.shape[0], xx.shape[1], -1))
        return layer.out_proj(torch.sigmoid(layer.output_gate(xx)) * o)

    with torch.no_grad():
        ref, ref_kv = layer(x, None, None)
        o, kv = cpu.lightning_attention(*qkv(x), layer.slope_rate.view(-1), block_size=64)
        close(finish(x, o), ref, torch.float32)
        close(kv[:, :, -1], ref_kv, torch.float32)
        cache = mm.MiniMaxCache()
        cache.set_linear_cache(0, ref_kv.clone())
        x1 = torch.randn(2, 1, 32)
        ref1, ref1_kv = layer(x1, None, None, cache=cache)
        pool = torch.zeros(3, 4, 16, 16)
        pool[1:] = ref_kv
        o1 = cpu.linear_decode_forward(
            *qkv(x1), pool, layer.slope_rate.view(-1), torch.tensor([1, 2])
        )
        close(finish(x1, o1.view(2, 1, 4, 16).transpose(1, 2)), ref1, torch.float32)
        close(pool[1:], ref1_kv, torch.float32)


@pytest.mark.parametrize("bf16_gemms", [True, False])
def test_prefill_bf16_gemm_policy(bf16_gemms: bool) -> None:
    """bf16 inputs: bf16 GEMM operands (default) stay within bf16 tolerance; with the policy
    off every product is fp32 and the error is the output rounding alone."""
    q, k, v, s = make(1, 2, 200, 32, 16, torch.bfloat16, seed=5)
    cfg = {**cpu._prefill_config(torch.bfloat16, 32, 16, 64), "bf16_gemms": bf16_gemms}
    with tuning.override("lightning_attention", cfg, device="cpu"):
        o1, kv1 = cpu.lightning_attention(q, k, v, s, block_size=64)
    o2, kv2 = spec.lightning_attention(q, k, v, s, block_size=64)
    close(o1, o2, torch.bfloat16 if bf16_gemms else torch.float16)
    close(kv1, kv2, torch.bfloat16 if bf16_gemms else torch.float32)
