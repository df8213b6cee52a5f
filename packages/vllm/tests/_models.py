"""Tiny random-weight checkpoints (safetensors + config.json) for the end-to-end tests.

Weights are drawn with std ~0.15 (norms ~1, A/dt/D in their usual ranges) so that the sequence
mixers visibly change the logits; vLLM's ``load_format="dummy"`` is near zero and hides bugs.
The models are built with HF transformers' own classes, so the checkpoint names are the real
ones and HF can serve as an oracle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

VOCAB = 512


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name:
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 7 + 1))
            elif "dt_bias" in name or "dt_proj.bias" in name:
                dt = torch.exp(torch.rand(p.shape, generator=g) * (math.log(0.1) - math.log(1e-3)))
                dt = dt * 1e-3
                p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            elif name.endswith(".D") or name == "D":
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif "norm" in name or "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "conv" in name and name.endswith("weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def _save(model: Any, out: Path, extra_config: dict[str, Any] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if extra_config:
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(extra_config)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def write_mamba2(out: Path, seed: int = 0, **overrides: Any) -> Path:
    """Mamba2ForCausalLM: hidden 64, 8 heads x 16, N=16, G=1, W=4, 2 layers, chunk 32."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    kw: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_heads=8,
        head_dim=16,
        expand=2,
        n_groups=1,
        state_size=16,
        conv_kernel=4,
        num_hidden_layers=2,
        chunk_size=32,
        tie_word_embeddings=False,
        use_conv_bias=True,
        use_bias=False,
        rms_norm=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kw.update(overrides)
    model = Mamba2ForCausalLM(Mamba2Config(**kw))
    _randomize(model, seed)
    return _save(model, out)


def write_mamba1(out: Path, seed: int = 0) -> Path:
    """MambaForCausalLM: hidden 64, d_inner 128, N=16, W=4, 2 layers."""
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        state_size=16,
        expand=2,
        conv_kernel=4,
        num_hidden_layers=2,
        time_step_rank=8,
        use_conv_bias=True,
        use_bias=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = MambaForCausalLM(cfg)
    _randomize(model, seed)
    return _save(model, out)


def write_lfm2(out: Path, seed: int = 0) -> Path:
    """Lfm2ForCausalLM: hidden 128, conv layers 0, 2 and an attention layer 1 (2 heads x 64)."""
    from transformers import Lfm2Config, Lfm2ForCausalLM

    layer_types = ["conv", "full_attention", "conv"]
    cfg = Lfm2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=len(layer_types),
        num_attention_heads=2,
        num_key_value_heads=1,
        layer_types=layer_types,
        conv_L_cache=3,
        conv_bias=False,
        block_multiple_of=32,
        block_ffn_dim_multiplier=1.0,
        block_auto_adjust_ff_dim=False,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = Lfm2ForCausalLM(cfg)
    _randomize(model, seed)
    # vLLM's Lfm2 reads keys that transformers' Lfm2Config does not carry.
    extra = {
        "conv_dim": 128,
        "conv_dim_out": 128,
        "block_dim": 128,
        "block_ff_dim": 256,
        "block_multiple_of": 32,
        "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": False,
    }
    return _save(model, out, extra)


def write_qwen3_next(out: Path, seed: int = 0, **overrides: Any) -> Path:
    """Qwen3NextForCausalLM: hidden 128, layers GDN / full attention / GDN (+ tiny MoE).

    GDN: 2 key heads x 64, 4 value heads x 64 (GVA 2), conv width 4; attention: 2 heads x 64,
    1 KV head. Head dims 64 so that vLLM-CPU's native GDN path (bf16, K=V in {64, 128}) runs.
    """
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    layer_types = ["linear_attention", "full_attention", "linear_attention"]
    cfg = Qwen3NextConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=len(layer_types),
        layer_types=layer_types,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        linear_conv_kernel_dim=4,
        # vLLM's Qwen3Next needs one MoE layer (set_moe_parameters): the last, 4 experts, top 2.
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=64,
        mlp_only_layers=list(range(len(layer_types) - 1)),
        tie_word_embeddings=False,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = Qwen3NextForCausalLM(cfg)
    _randomize(model, seed)
    return _save(model, out)


def write_qwen3_next_mtp(out: Path, seed: int = 0) -> Path:
    """:func:`write_qwen3_next` plus one MTP layer (``mtp.*`` weights, as Qwen3-Next's
    checkpoints carry them) for vLLM's ``mtp`` speculative method.

    vLLM builds the MTP layer as a full-attention decoder layer with the index 0 in
    ``mlp_only_layers`` terms and requires an MoE MLP there, so layer 0 is MoE here (layers 0
    and 2 MoE, the attention layer dense). The MTP layer's weights are those of a one-layer
    full-attention MoE Qwen3Next drawn like the rest; ``fc`` and the three norms are drawn too.
    """
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3NextForCausalLM

    write_qwen3_next(out, seed, mlp_only_layers=[1])
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    donor_cfg = type(Qwen3NextForCausalLM.config_class())(
        **{**cfg, "num_hidden_layers": 1, "layer_types": ["full_attention"], "mlp_only_layers": []}
    )
    donor = Qwen3NextForCausalLM(donor_cfg)
    _randomize(donor, seed + 1)
    weights = load_file(out / "model.safetensors")
    for name, t in donor.state_dict().items():
        if name.startswith("model.layers.0."):
            weights["mtp." + name.removeprefix("model.")] = t.detach().clone().contiguous()
    g = torch.Generator().manual_seed(seed + 2)
    h = int(cfg["hidden_size"])
    weights["mtp.fc.weight"] = 0.15 * torch.randn(h, 2 * h, generator=g)
    for norm in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        weights[f"mtp.{norm}.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    cfg["num_nextn_predict_layers"] = 1
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def prompts(seed: int = 0) -> list[list[int]]:
    """Ten prompts of 3 to 131 tokens (ids in [3, VOCAB))."""
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 7, 12, 25, 40, 57, 64, 77, 103, 131]
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]
