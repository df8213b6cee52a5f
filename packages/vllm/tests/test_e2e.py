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


def _openmp_threads(snap: dict[str, Any]) -> list[str]:
    """Threads whose program counter lies in an OpenMP runtime (idle OpenMP team workers)."""
    runtimes = {p.rsplit("/", 1)[-1] for p in snap["openmp_runtimes"]}
    return [tid for tid, where in snap["thread_locations"].items() if where in runtimes]


def assert_worker_threads(workers: list[dict[str, Any]], bind: list[list[int]]) -> None:
    """Each TP worker's threads after vLLM's binding (``VLLM_CPU_OMP_THREADS_BIND``; worker
    ``r`` gets the cores ``bind[r]``), from ``_runner._worker_threads`` before and after the
    generation: our kernels get a team of exactly the cores bound, on torch's libgomp, the
    first kernel call creates no thread, and no thread of the worker is left unbound."""
    assert len(workers) == len(bind), workers
    for rank, (w, cores) in enumerate(zip(workers, bind, strict=True)):
        routed, first, gen = w["before"]["routing"], w["before"], w["after"]
        where = f"TP rank {rank} (pid {first['now']['pid']})"
        # At routing time (before any kernel) and at every kernel call: the team size our
        # kernels are given (torch.get_num_threads()) equals the cores this worker is bound to.
        for snap in (routed, first["now"], gen["now"], gen["after_probe"]):
            assert snap["pid"] == first["now"]["pid"], where
            assert snap["tid"] == routed["tid"], (where, "kernels run on the routing thread")
            assert snap["torch_threads"] == len(cores), (where, snap["torch_threads"], cores)
            assert snap["affinity"] == cores, (where, snap["affinity"], cores)
        assert first["probe_nthreads"] and set(first["probe_nthreads"]) == {len(cores)}, where
        assert set(gen["probe_nthreads"]) == {len(cores)}, (where, gen["probe_nthreads"])
        # The probe before the generation was this worker's first native kernel call (no
        # library loaded before it), and it created no thread.
        assert first["now"]["native"] == {}, (where, first["now"]["native"])
        grown = set(first["after_probe"]["threads"]) - set(first["now"]["threads"])
        assert not grown, (where, "threads created by the first kernel call", grown)
        assert not set(gen["after_probe"]["threads"]) - set(gen["now"]["threads"]), where
        # Our libraries call torch's libgomp (vLLM's sentencepiece import maps a second
        # libgomp into the worker: no thread of ours runs on it, checked below).
        torch_omp = gen["now"]["torch_openmp"]
        assert torch_omp in gen["now"]["openmp_runtimes"], where
        assert {"conv", "ssm"} <= set(gen["now"]["native"]), (where, gen["now"]["native"])
        for name, lib in gen["now"]["native"].items():
            assert lib["gomp_parallel_from"] == torch_omp, (where, name, lib, torch_omp)
        # After the generation: every thread of the worker may run only on its cores, the
        # kernels' thread (team 0) on its own single core, and with a team of one no OpenMP
        # worker thread exists (an idle one waits inside its runtime: thread_locations).
        for snap in (gen["now"], gen["after_probe"]):
            unbound = {t: c for t, c in snap["threads"].items() if not set(c) <= set(cores)}
            assert not unbound, (where, "threads not bound to the worker's cores", unbound)
            assert snap["threads"][str(routed["tid"])] == cores, where
            omp = _openmp_threads(snap)
            assert len(omp) == len(cores) - 1, (where, "OpenMP worker threads", omp)


def test_mamba2_tp2_equals_tp1(engines: Engines) -> None:
    """TP=2 (n_groups=1: B/C replicated per rank) gives the TP=1 tokens; each worker, bound to
    one core (``VLLM_CPU_OMP_THREADS_BIND=0|1``), runs our kernels on one thread of torch's
    libgomp on that core (:func:`assert_worker_threads`)."""
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
    workers = tp2["worker_threads"]
    assert {str(w["before"]["now"]["pid"]) for w in workers} <= pids, (pids, workers)
    assert_worker_threads(workers, bind=[[0], [1]])  # _runner.py binds "0|1"
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
