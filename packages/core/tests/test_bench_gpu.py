"""The GPU rows, baselines and the GPU script's helpers (``benchmarks/``), without a GPU."""

from __future__ import annotations

import builtins
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mamba_backends.bench import gpu_baselines as gbl
from mamba_backends.bench.cases import CASES
from mamba_backends.bench.inputs import BUILDERS
from mamba_backends.bench.runner import baseline_impl

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _gpu_targets as targets  # noqa: E402
import gpu as gpu_script  # noqa: E402


def _row(spec_op: str, spec_type: str) -> Any:
    return next(s for s in CASES["gpu"]["full"] if s.op == spec_op and s.mamba_type == spec_type)


def test_gpu_rows_use_the_issue_shapes() -> None:
    conv = _row("causal_conv1d_fn", "mamba2")
    assert conv.params["seqlens"] == (1024,) * 8 and conv.params["dim"] == 5120 + 256
    assert "roofline" in conv.tags and set(conv.baselines) == {"vllm-triton", "fla"}
    ssu = _row("selective_state_update", "mamba2")
    assert (ssu.params["H"], ssu.params["P"], ssu.params["N"], ssu.params["batch"]) == (
        80,
        64,
        128,
        256,
    )
    m1 = _row("selective_state_update", "mamba1")
    assert (m1.params["dim"], m1.params["N"], m1.params["form"]) == (5120, 16, "mamba1")
    gdn = _row("chunk_gated_delta_rule", "gdn")
    assert (gdn.params["H"], gdn.params["HV"], gdn.params["K"], gdn.params["V"]) == (
        16,
        32,
        128,
        128,
    )
    la = _row("linear_decode_forward", "linear_attention")
    assert (la.params["H"], la.params["D"], la.params["batch"]) == (64, 128, 256)
    assert all(s.dtype == "bfloat16" for s in CASES["gpu"]["full"])
    # The tiny table has the same rows (op, type) as the full one.
    key = [(s.op, s.mamba_type) for s in CASES["gpu"]["full"]]
    assert [(s.op, s.mamba_type) for s in CASES["gpu"]["tiny"]] == key


def test_ssu_mamba1_form_inputs() -> None:
    inp = BUILDERS["selective_state_update"](
        {"form": "mamba1", "dim": 8, "N": 4, "batch": 3}, torch.float32, torch.device("cpu")
    )
    a = inp.args
    assert a["state"].shape == (4, 8, 4) and a["x"].shape == (3, 8) and a["B"].shape == (3, 4)
    assert a["A"].shape == (8, 4) and a["out"].shape == (3, 8)
    assert inp.bytes_moved == 2 * 3 * 8 * 4 * 4 + 4 * (4 * 3 * 8 + 2 * 3 * 4)


def test_missing_gpu_baselines_are_na_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_fla_no_vllm(name: str, *args: Any, **kw: Any) -> Any:
        if name.split(".")[0] in ("fla", "vllm"):
            raise ImportError(f"no {name}")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_fla_no_vllm)
    for kind in gbl.GPU_BASELINES:
        for spec in CASES["gpu"]["full"]:
            for_kind = baseline_impl(kind, spec.op, spec.mamba_type)
            assert for_kind.call is None and for_kind.unavailable, (kind, spec.op)
    scan = gbl.vllm_triton_impl("selective_scan_fn")
    assert scan.call is None and "C++" in scan.unavailable


def test_roofline_bytes_count_activations_in_and_out() -> None:
    inp = BUILDERS["causal_conv1d_fn"](
        {"dim": 16, "W": 4, "seqlens": (5, 3)}, torch.bfloat16, torch.device("cpu")
    )
    assert gbl.roofline_bytes("causal_conv1d_fn", inp) == 2 * 16 * 8 * 2


def _rows(op: str, mtype: str, **kw: Any) -> list[dict[str, Any]]:
    base = {"op": op, "mamba_type": mtype, "ours_status": "ok", "baseline_status": "ok"}
    return [{**base, **kw}]


def test_targets_pass_and_miss() -> None:
    def status(rows: list[dict[str, Any]], name: str) -> str:
        return next(t["status"] for t in targets.evaluate(rows) if t["target"] == name)

    conv = "causal_conv1d_update"
    fast = _rows(conv, "mamba2", baseline="vllm-triton", ratio=0.9, ours_ms=0.9, baseline_ms=1.0)
    slow = _rows(conv, "mamba2", baseline="vllm-triton", ratio=1.2, ours_ms=1.2, baseline_ms=1.0)
    assert status(fast, "conv1d update, batch 256") == "pass"
    assert status(slow, "conv1d update, batch 256") == "miss"
    # 1 GB in 0.4 ms = 2500 GB/s against a 2800 GB/s copy: 89% passes; 0.5 ms (71%) misses.
    dec = {"baseline": "vllm-triton", "bytes_moved": 10**9, "copy_gbps": 2800.0, "ratio": 0.9}
    ok = _rows("linear_decode_forward", "linear_attention", ours_ms=0.4, baseline_ms=1.0, **dec)
    low = _rows("linear_decode_forward", "linear_attention", ours_ms=0.5, baseline_ms=1.0, **dec)
    assert status(ok, "linear decode") == "pass"
    assert status(low, "linear decode") == "miss"
    # Mamba2 SSU needs both: bandwidth met but slower than vLLM is a miss.
    both = dict(dec, ratio=1.1)
    ssu = _rows("selective_state_update", "mamba2", ours_ms=0.4, baseline_ms=0.36, **both)
    assert status(ssu, "SSU decode, Mamba2 form") == "miss"
    # Nothing measured: n/a with a reason, never an exception.
    res = {t["target"]: t for t in targets.evaluate([])}
    assert res["GDN chunk"]["status"] == "n/a" and res["GDN chunk"]["detail"]
    md = targets.markdown_targets(targets.evaluate(fast))
    assert "| 9 | conv1d update, batch 256 |" in md and "pass" in md


def test_parse_conformance_counts_per_dtype(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    t = "packages/triton/tests/test_triton_conformance.py::TestTritonConformance::test_case"
    log.write_text(
        f"{t}[triton.mamba2|ssu:oneshot[bf16/fp32,seed=1]] PASSED\n"
        f"{t}[triton.mamba2|ssu:oneshot[bf16/fp32,seed=2]] FAILED\n"
        f"{t}[triton.gdn|x:oneshot[fp16/bf16,seed=3]] SKIPPED\n"
        "===== 1 failed, 1 passed, 1 skipped in 3.0s =====\n"
    )
    res = gpu_script.parse_conformance(log)
    assert res["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert res["by_pair"]["bf16/fp32"] == {"passed": 1, "failed": 1}
    assert res["failed"] == ["test_case[triton.mamba2|ssu:oneshot[bf16/fp32,seed=2]]"]


def test_member_shim_carries_entry_points(tmp_path: Path) -> None:
    paths = gpu_script._shim_members(tmp_path)
    assert all(Path(p).is_dir() for p in paths)
    dists = {d.metadata["Name"]: d for d in importlib.metadata.distributions(path=[str(tmp_path)])}
    cuda = dists["mamba-backends-cuda"]
    groups = {ep.group for ep in cuda.entry_points}
    assert "mamba_backends.platforms" in groups
    core = dists["mamba-backends-core"]
    assert any(ep.group == "mamba_backends.backends" for ep in core.entry_points)
