"""Run one vLLM engine on a tiny checkpoint and write tokens/logprobs to JSON.

Usage: ``python _runner.py spec.json out.json``. One engine start per call. The spec keys:
``model``, ``dtype``, ``plugin`` (bool), ``tp`` (int), ``prompts`` (token id lists),
``max_tokens``, ``max_num_batched_tokens``, ``logprobs``, ``mutation`` (None or a name in
:data:`MUTATIONS`), ``bench`` (bool: skip logprobs, report timing only).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _mutate(name: str) -> None:
    """Break one op of the selected backend on purpose (mutation check)."""
    import importlib

    import torch

    from mamba_backends import get_mamba_backend

    if name == "ssd_drop_D":
        mod: Any = importlib.import_module(get_mamba_backend("mamba2").ops_module)
        real = mod.mamba_chunk_scan_combined_varlen

        def broken(*args: Any, **kwargs: Any) -> Any:
            kwargs["D"] = torch.zeros_like(kwargs["D"])
            return real(*args, **kwargs)

        mod.mamba_chunk_scan_combined_varlen = broken
    elif name == "conv_update_shift":
        mod = importlib.import_module(get_mamba_backend("short_conv").ops_module)
        real_upd = mod.causal_conv1d_update

        def broken_upd(x: Any, conv_state: Any, *args: Any, **kwargs: Any) -> Any:
            # Shift the stored window by one column before the update.
            conv_state.copy_(torch.roll(conv_state, 1, dims=-1))
            return real_upd(x, conv_state, *args, **kwargs)

        mod.causal_conv1d_update = broken_upd
    elif name == "gdn_chunk_no_decay":
        mod = importlib.import_module(get_mamba_backend("gdn").ops_module)
        real_chunk = mod.chunk_gated_delta_rule

        def broken_chunk(q: Any, k: Any, v: Any, g: Any, *args: Any, **kwargs: Any) -> Any:
            # Drop the gated decay (g = 0) in the GDN prefill.
            return real_chunk(q, k, v, torch.zeros_like(g), *args, **kwargs)

        mod.chunk_gated_delta_rule = broken_chunk
    else:
        raise ValueError(f"unknown mutation {name!r}")


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    tp = int(spec.get("tp", 1))
    if not spec["plugin"]:
        os.environ["MAMBA_BACKENDS_VLLM_DISABLE"] = "1"
    if tp == 1:
        # In-process engine: the mutation hook and routing_table() see the engine's process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(tp))
    if spec.get("mutation"):
        _mutate(spec["mutation"])

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import mamba_backends_vllm

    t0 = time.perf_counter()
    llm = LLM(
        model=spec["model"],
        dtype=spec["dtype"],
        tensor_parallel_size=tp,
        skip_tokenizer_init=True,
        enforce_eager=True,
        enable_chunked_prefill=True,
        enable_prefix_caching=False,
        max_num_batched_tokens=int(spec["max_num_batched_tokens"]),
        max_num_seqs=int(spec.get("max_num_seqs", 16)),
        max_model_len=int(spec.get("max_model_len", 1024)),
        kv_cache_memory_bytes=int(spec.get("kv_cache_memory_bytes", 256 << 20)),
        seed=0,
    )
    t_start = time.perf_counter() - t0
    params = SamplingParams(
        temperature=0.0,
        max_tokens=int(spec["max_tokens"]),
        ignore_eos=True,
        detokenize=False,
        logprobs=None if spec.get("bench") else int(spec.get("logprobs", 5)),
    )
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    if spec.get("bench"):
        llm.generate(prompts[:2], SamplingParams(max_tokens=4, detokenize=False), use_tqdm=False)
    t1 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    t_gen = time.perf_counter() - t1
    result: dict[str, Any] = {
        "start_s": t_start,
        "generate_s": t_gen,
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "routing": mamba_backends_vllm.routing_table(),
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
    }
    if not spec.get("bench"):
        result["logprobs"] = [
            [{str(k): v.logprob for k, v in step.items()} for step in (o.outputs[0].logprobs or [])]
            for o in outs
        ]
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
