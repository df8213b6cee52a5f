"""vLLM's default mode (the model compiled, no ``enforce_eager``) with the plugin, on vLLM CPU.

vLLM compiles each model with Dynamo + Inductor (``CompilationMode.DYNAMO_TRACE_ONCE`` on CPU);
the mamba mixers enter the graph as vLLM's own opaque custom ops (``vllm::mamba_mixer2`` ...),
and inside them our ops run. Proof per routed type, fp32 so that tokens must match exactly:

- the compiled run is routed, was really compiled (a compile cache of its own, no graph
  break), and gives the eager plugin run's greedy tokens and logprobs;
- LFM2 is the exception: vLLM-CPU's eager rotary op is off for it (``test_e2e.py``'s strict
  xfail), native and plugin alike, so its compiled run is held to HF transformers instead;
- a compiled run with one of our kernels broken on purpose differs: under compilation the
  layers still call the kernels the plugin routed them to (nothing was frozen at trace time).

One engine start per configuration (``_engines.Engines``); the eager runs are those of
``test_e2e.py`` and ``test_qwen3_next_e2e.py`` (same session, same results).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _engines import Engines, add_config, compare, hf_greedy

pytestmark = pytest.mark.slow

FP32_ATOL = 1e-3

#: checkpoint -> (our mamba type, the eager plugin configuration it must equal, or "hf")
TYPES: dict[str, tuple[str, str]] = {
    "mamba2": ("mamba2", "mamba2_fp32_plugin"),
    "mamba1": ("mamba1", "mamba1_fp32_plugin"),
    "lfm2": ("short_conv", "hf"),
    "qwen3_next": ("gdn", "qwen3_next_fp32_plugin"),
}
COMPILED = {
    model: add_config(f"{model}_fp32_plugin_compiled", model, "float32", True, enforce_eager=False)
    for model in TYPES
}
MUTANT = add_config(
    "mamba2_fp32_mutant_compiled",
    "mamba2",
    "float32",
    True,
    mutation="ssd_drop_D",
    enforce_eager=False,
)


def _assert_compiled(run: dict[str, Any], name: str, engines: Engines) -> None:
    # CompilationMode.NONE is 0; vLLM CPU compiles with DYNAMO_TRACE_ONCE (2).
    assert run["compilation_mode"] not in ("0", "CompilationMode.NONE"), run["compilation_mode"]
    assert run["graph_breaks"] == {}, run["graph_breaks"]
    cache = Path(engines.work) / f"vllm_cache_{name}" / "torch_compile_cache"
    assert cache.is_dir() and any(p.is_file() for p in cache.rglob("*")), cache


@pytest.mark.parametrize("model", list(TYPES))
def test_compiled_equals_eager(
    engines: Engines, model: str, checkpoints: dict[str, Path], prompts: list[list[int]]
) -> None:
    mamba_type, eager_name = TYPES[model]
    compiled = engines.get(COMPILED[model])
    if eager_name == "hf":
        eager = hf_greedy(checkpoints[model], prompts)
    else:
        eager = engines.get(eager_name)
    layer = compiled["routing"]["layers"][mamba_type]
    assert layer["status"] == "routed" and layer["patched"], compiled["routing"]
    _assert_compiled(compiled, COMPILED[model], engines)
    assert compiled["tokens"] == eager["tokens"]
    assert compare(compiled, eager, FP32_ATOL) == []


def test_compiled_mutation_is_detected(engines: Engines) -> None:
    """Dropping D in our SSD op must change the compiled model's output too."""
    mutant, eager = engines.get(MUTANT), engines.get("mamba2_fp32_plugin")
    _assert_compiled(mutant, MUTANT, engines)
    assert compare(mutant, eager, FP32_ATOL) != []
