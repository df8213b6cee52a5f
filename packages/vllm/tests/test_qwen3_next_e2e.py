"""Qwen3-Next (gated delta net + full attention) end to end on vLLM CPU, with and without us.

One tiny random-weight checkpoint (``_models.write_qwen3_next``: hidden 128, GDN / attention /
GDN, head dims 64), ten prompts of 3-131 tokens, chunked prefill with a 48-token budget,
greedy, 8 new tokens. Four engine starts in all (bf16 native, bf16 plugin, fp32 plugin, fp32
mutant), each in a subprocess (``conftest.Engines``), plus HF transformers in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _engines import MAX_TOKENS, Engines, compare

pytestmark = pytest.mark.slow

FP32_ATOL = 1e-3
#: bf16 end to end (attention, MoE and norms in bf16 too): vLLM native and plugin differ by
#: up to ~0.17 nats on this model (each is ~0.3 from HF fp32); tokens may differ only at ties.
BF16_ATOL = 0.25


def _assert_gdn_routed(run: dict[str, Any]) -> None:
    layer = run["routing"]["layers"]["gdn"]
    assert layer["status"] == "routed" and layer["patched"], run["routing"]
    assert layer["attention_backend"].endswith("RoutedGDNAttentionBackend"), layer


def _hf_greedy(model_dir: Path, prompts: list[list[int]]) -> dict[str, Any]:
    """HF transformers' Qwen3NextForCausalLM in fp32 (torch paths, no cache), top-5 logprobs."""
    import torch
    from transformers import Qwen3NextForCausalLM

    model, info = Qwen3NextForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    tokens, logprobs = [], []
    with torch.no_grad():
        for p in prompts:
            ids, out, lps = list(p), [], []
            for _ in range(MAX_TOKENS):
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
                top = torch.topk(lp, 5)
                lps.append(
                    {str(int(i)): float(v) for v, i in zip(top.values, top.indices, strict=True)}
                )
                out.append(int(top.indices[0]))
                ids.append(out[-1])
            tokens.append(out)
            logprobs.append(lps)
    return {"tokens": tokens, "logprobs": logprobs}


@pytest.fixture(scope="module")
def hf_qwen3_next(checkpoints: dict[str, Path], prompts: list[list[int]]) -> dict[str, Any]:
    return _hf_greedy(checkpoints["qwen3_next"], prompts)


def test_qwen3_next_bf16_plugin_matches_native(engines: Engines) -> None:
    native, plugin = engines.get("qwen3_next_bf16_native"), engines.get("qwen3_next_bf16_plugin")
    assert native["routing"]["summary"].startswith("disabled"), native["routing"]
    _assert_gdn_routed(plugin)
    assert compare(plugin, native, BF16_ATOL, exact_tokens=False) == []


def test_qwen3_next_fp32_plugin_equals_hf(engines: Engines, hf_qwen3_next: dict[str, Any]) -> None:
    """vLLM-CPU refuses fp32 GDN; with the plugin it runs and gives HF's fp32 tokens."""
    plugin = engines.get("qwen3_next_fp32_plugin")
    _assert_gdn_routed(plugin)
    assert compare(plugin, hf_qwen3_next, FP32_ATOL) == []


def test_gdn_mutation_is_detected(engines: Engines, hf_qwen3_next: dict[str, Any]) -> None:
    """Dropping the decay g in the GDN prefill op must break the fp32 comparison with HF."""
    mutant = engines.get("qwen3_next_fp32_mutant")
    _assert_gdn_routed(mutant)
    assert compare(mutant, hf_qwen3_next, FP32_ATOL) != []
