"""Run one vLLM engine on a tiny checkpoint and write tokens/logprobs to JSON.

Usage: ``python _runner.py spec.json out.json``. One engine start per call. The spec keys:
``model``, ``dtype``, ``plugin`` (bool), ``tp`` (int), ``prompts`` (token id lists),
``max_tokens``, ``max_num_batched_tokens``, ``logprobs``, ``mutation`` (None or a name in
:data:`MUTATIONS`), ``bench`` (bool: skip logprobs, report timing only), and the engine modes:
``enforce_eager`` (default True), ``enable_prefix_caching`` (default False),
``speculative_config`` (a dict, default None) and ``rounds`` (how many times the prompts are
generated in turn, default 1; ``tokens``/``logprobs`` hold the last round, ``rounds_tokens``
every round, ``metrics`` vLLM's prefix-cache and speculative-decoding counters after the
run); ``llm_kwargs`` (a dict) goes to ``LLM(...)`` as is. With ``tp`` > 1 and the plugin on,
``worker_threads`` holds, per worker process, :func:`_worker_threads` before and after the
generation (a ``collective_rpc`` of a callable: ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``).
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
    elif name == "conv_window_ahead":
        mod = importlib.import_module(get_mamba_backend("short_conv").ops_module)
        real_cu = mod.causal_conv1d_update

        def broken_cu(*args: Any, **kwargs: Any) -> Any:
            # Speculative decoding: after a rejected draft, read the window one column late.
            a = kwargs.get("num_accepted_tokens")
            if a is not None:
                kwargs["num_accepted_tokens"] = torch.where(a == 1, 2, a)
            return real_cu(*args, **kwargs)

        mod.causal_conv1d_update = broken_cu
    elif name == "ssu_dst_rolled":
        mod = importlib.import_module(get_mamba_backend("mamba2").ops_module)
        real_ssu = mod.selective_state_update

        def broken_ssu(*args: Any, **kwargs: Any) -> Any:
            # Speculative decoding: the state after draft position j lands in slot j+1 (mod k).
            dst = kwargs.get("dst_state_batch_indices")
            if dst is not None and dst.dim() == 2 and dst.shape[1] > 1:
                kwargs["dst_state_batch_indices"] = dst.roll(1, dims=1).contiguous()
            return real_ssu(*args, **kwargs)

        mod.selective_state_update = broken_ssu
    elif name == "gdn_chunk_no_decay":
        mod = importlib.import_module(get_mamba_backend("gdn").ops_module)
        real_chunk = mod.chunk_gated_delta_rule

        def broken_chunk(q: Any, k: Any, v: Any, g: Any, *args: Any, **kwargs: Any) -> Any:
            # Drop the gated decay (g = 0) in the GDN prefill.
            return real_chunk(q, k, v, torch.zeros_like(g), *args, **kwargs)

        mod.chunk_gated_delta_rule = broken_chunk
    elif name == "checkpoint_zeros":
        mod = importlib.import_module(get_mamba_backend("mamba2").ops_module)
        real_ckpt = mod.store_prefill_checkpoint

        def broken_ckpt(x: Any, chunk_states: Any, *args: Any, **kwargs: Any) -> Any:
            # Prefix caching: the checkpoint blocks get zero conv and SSM states.
            return real_ckpt(torch.zeros_like(x), torch.zeros_like(chunk_states), *args, **kwargs)

        mod.store_prefill_checkpoint = broken_ckpt
    else:
        raise ValueError(f"unknown mutation {name!r}")


def _worker_threads(worker: Any = None, probe: bool = False) -> dict[str, Any]:
    """In a worker (``collective_rpc``): its plugin's thread record from routing time, a thread
    snapshot now and, with ``probe``, one causal-conv1d prefill through the routed backend's
    ops on this thread (the one that runs the model) with the ``nthreads`` that each native
    kernel call was given and the thread snapshot after it."""
    import torch

    import mamba_backends_vllm
    from mamba_backends_vllm import _plugin, _threads

    out: dict[str, Any] = {
        "routing": mamba_backends_vllm.routing_table()["threads"],
        "now": _threads.snapshot(),
    }
    if probe:
        from mamba_backends_cpu.native import _build

        nthreads: list[int] = []
        real = _build.call

        def counting(fn: Any, args: Any, allow: tuple[int, ...] = ()) -> int:
            nthreads.append(int(args.nthreads))
            return real(fn, args, allow)

        dim, T, W = 64, 40, 4
        x = torch.randn(T, dim).t()  # channel-last (dim, T)
        weight, states = torch.randn(dim, W), torch.zeros(1, dim, W - 1)
        qsl = torch.tensor([0, T], dtype=torch.int32)
        _build.call = counting
        try:
            _plugin.ops_for("mamba2").causal_conv1d_fn(
                x, weight, None, states, qsl, torch.tensor([0], dtype=torch.int32),
                torch.tensor([False]),
            )  # fmt: skip
        finally:
            _build.call = real
        out["probe_nthreads"] = nthreads
        out["after_probe"] = _threads.snapshot()
    return out


def _prefix_cache_metrics(llm: Any) -> dict[str, float]:
    """vLLM's prefix-cache counters (``vllm:prefix_cache_queries`` / ``_hits``) and speculative
    decoding counters (``vllm:spec_decode_num_draft_tokens`` / ``_num_accepted_tokens`` ...),
    each summed over its label sets (histograms skipped)."""
    out: dict[str, float] = {}
    try:
        metrics = llm.get_metrics()
    except Exception as e:  # noqa: BLE001 - reported, not fatal: not every mode keeps stats
        return {"error": repr(e)}  # type: ignore[dict-item]
    for m in metrics:
        if m.name.startswith(("vllm:prefix_cache_", "vllm:spec_decode_")) and hasattr(m, "value"):
            out[m.name] = out.get(m.name, 0.0) + float(m.value)
    return out


def _keeps_stats(spec: dict[str, Any]) -> bool:
    return bool(spec.get("enable_prefix_caching") or spec.get("speculative_config"))


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
    ask_workers = tp > 1 and bool(spec["plugin"])
    if ask_workers:
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # a callable to collective_rpc
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
        enforce_eager=bool(spec.get("enforce_eager", True)),
        enable_chunked_prefill=True,
        enable_prefix_caching=bool(spec.get("enable_prefix_caching", False)),
        speculative_config=spec.get("speculative_config"),
        # Stats on only where they are read: the prefix-cache and draft counters come from them.
        disable_log_stats=not _keeps_stats(spec),
        max_num_batched_tokens=int(spec["max_num_batched_tokens"]),
        max_num_seqs=int(spec.get("max_num_seqs", 16)),
        max_model_len=int(spec.get("max_model_len", 1024)),
        kv_cache_memory_bytes=int(spec.get("kv_cache_memory_bytes", 256 << 20)),
        seed=0,
        **spec.get("llm_kwargs", {}),
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
    # The probe before the generation is each worker's first native kernel call.
    threads_before = llm.collective_rpc(_worker_threads, args=(True,)) if ask_workers else []
    t1 = time.perf_counter()
    rounds_tokens = []
    for _ in range(int(spec.get("rounds", 1))):
        outs = llm.generate(prompts, params, use_tqdm=False)
        rounds_tokens.append([list(o.outputs[0].token_ids) for o in outs])
    t_gen = time.perf_counter() - t1
    threads_after = llm.collective_rpc(_worker_threads, args=(True,)) if ask_workers else []
    import torch._dynamo.utils

    result: dict[str, Any] = {
        "start_s": t_start,
        # Compiled mode: what vLLM ran and how often Dynamo broke the graph in this process.
        "compilation_mode": str(llm.llm_engine.vllm_config.compilation_config.mode),
        "graph_breaks": {
            str(k): int(v) for k, v in torch._dynamo.utils.counters["graph_break"].items()
        },
        "generate_s": t_gen,
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "routing": mamba_backends_vllm.routing_table(),
        "tokens": rounds_tokens[-1],
        "rounds_tokens": rounds_tokens,
        "metrics": _prefix_cache_metrics(llm) if _keeps_stats(spec) else {},
        "worker_threads": [
            {"before": b, "after": a} for b, a in zip(threads_before, threads_after, strict=True)
        ],
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
