"""Smoke tests of the side-by-side benchmark: harness, rows, table, JSON, CLI (tiny shapes)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mamba_backends.bench import baselines as bl
from mamba_backends.bench.cases import CASES, CaseSpec, shape_label, table_for
from mamba_backends.bench.harness import (
    ERROR,
    NOT_IMPLEMENTED,
    OK,
    UNAVAILABLE,
    Case,
    Impl,
    Inputs,
    clone_args,
    measure,
)
from mamba_backends.bench.inputs import BUILDERS, L3_STATE_BYTES, resolve_batch
from mamba_backends.bench.report import format_table
from mamba_backends.bench.runner import BASELINES, ROW_KEYS, BenchConfig, rows_for_case
from mamba_backends.cli import main

REF = "mamba_backends.reference.backends"


def _sleeper(ms: float) -> Any:
    """An op that takes ``ms`` and writes a real output into ``out``."""

    def call(args: dict[str, Any]) -> Any:
        time.sleep(ms / 1e3)
        args["out"].copy_(args["x"] * 2)
        return args["out"]

    return call


def _inputs(prefill: bool = True) -> Inputs:
    args = {"x": torch.arange(1.0, 9.0), "out": torch.empty(8)}
    return Inputs(
        args,
        lambda r, a: a["out"],
        prefill=prefill,
        tokens=8,
        bytes_moved=0 if prefill else 4096,
        flops=16.0,
    )


def _case(ours: Impl, *baselines: Impl) -> tuple[Case, Inputs]:
    inputs = _inputs()
    return Case("toy_op", "mamba2", "n=8", torch.float32, ours, baselines), inputs


def test_ratio_is_ours_over_baseline_from_measured_medians() -> None:
    case, inputs = _case(Impl("ours", _sleeper(2.0)), Impl("slow", _sleeper(8.0)))
    rows = rows_for_case(case, inputs, BenchConfig(repeats=3, warmup=0))
    assert len(rows) == 1
    row = rows[0]
    assert set(ROW_KEYS) <= set(row)
    assert row["ours_status"] == OK and row["baseline_status"] == OK
    assert len(row["ours_samples_ms"]) == 3 and len(row["baseline_samples_ms"]) == 3
    assert row["ours_ms"] == sorted(row["ours_samples_ms"])[1]
    assert row["baseline_ms"] == sorted(row["baseline_samples_ms"])[1]
    assert row["ratio"] == pytest.approx(row["ours_ms"] / row["baseline_ms"])
    # The timings are real: 2 ms of work against 8 ms.
    assert row["ours_ms"] >= 2.0 and row["baseline_ms"] >= 8.0
    assert 0.1 < row["ratio"] < 0.7
    assert row["tokens_per_s"] == pytest.approx(8 / (row["ours_ms"] * 1e-3))
    assert row["max_rel_diff"] == 0.0


def test_failing_impls_become_rows_not_crashes() -> None:
    def not_impl(args: dict[str, Any]) -> Any:
        raise NotImplementedError("toy_op is not implemented yet")

    def no_op(args: dict[str, Any]) -> Any:  # never writes `out`
        return args["out"]

    def zeros(args: dict[str, Any]) -> Any:
        return torch.zeros(8)

    case, inputs = _case(
        Impl("ours", not_impl),
        Impl("noop", no_op),
        Impl("zeros", zeros),
        Impl("absent", None, unavailable="not installed"),
        Impl("refuses", not_impl),
        Impl("ok", _sleeper(0.1)),
    )
    rows = rows_for_case(case, inputs, BenchConfig(repeats=1, warmup=0))
    status = {r["baseline"]: r["baseline_status"] for r in rows}
    assert status == {
        "noop": ERROR,
        "zeros": ERROR,
        "absent": UNAVAILABLE,
        "refuses": UNAVAILABLE,  # a baseline refusing a case is n/a
        "ok": OK,
    }
    assert all(r["ours_status"] == NOT_IMPLEMENTED and r["ratio"] is None for r in rows)
    assert "not implemented yet" in rows[0]["note"]
    table = format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["op", "shape", "dtype", "ours"]
    assert "not implemented" in table and "n/a" in table and "ours/base" in table


def test_restored_inputs_make_every_call_do_the_same_work() -> None:
    seen: list[float] = []

    def overwrite(args: dict[str, Any]) -> Any:
        seen.append(float(args["x"].sum()))
        args["x"].mul_(10.0)  # an op writing its output into an input (like selective_scan_fn)
        return args["x"]

    inputs = _inputs()
    inputs.restore = ("x",)
    inputs.output = lambda result, args: result
    m = measure(Impl("ours", overwrite), inputs, repeats=4, warmup=1)
    assert m.status == OK
    assert seen == [36.0] * 6  # validation + warmup + 4 repeats, each on pristine x
    assert float(inputs.args["x"].sum()) == 36.0


def test_clone_keeps_strided_views_and_expands() -> None:
    page = torch.randn(5, 3, 16)
    conv_state = page.transpose(1, 2)  # (slots, dim, W-1) view of (slots, W-1, dim)
    dt = torch.randn(4, 2)[:, :, None].expand(-1, -1, 8)
    c = clone_args({"conv_state": conv_state, "dt": dt, "n": 3})
    assert c["conv_state"].stride() == conv_state.stride()
    assert c["dt"].stride() == dt.stride()
    assert torch.equal(c["conv_state"], conv_state) and torch.equal(c["dt"], dt)
    assert c["conv_state"].data_ptr() != conv_state.data_ptr() and c["n"] == 3


def test_l3_batch_exceeds_the_cache_and_labels_say_so() -> None:
    slot = 24 * 64 * 128 * 4  # a Mamba2-130M fp32 SSM state
    b = resolve_batch("l3", slot)
    assert b * slot > L3_STATE_BYTES and (b // 2) * slot <= L3_STATE_BYTES
    spec = CaseSpec("selective_state_update", "mamba2", {"H": 24, "batch": "l3"}, ("vllm",))
    assert shape_label(spec, b, b * slot) == f"H=24 B={b} ({b * slot // 2**20} MiB states)"
    with pytest.raises(ValueError, match="batch"):
        resolve_batch("big", slot)


def test_every_table_row_has_a_builder_and_known_baselines() -> None:
    for sizes in CASES.values():
        for rows in sizes.values():
            for spec in rows:
                assert spec.op in BUILDERS
                assert set(spec.baselines) <= set(BASELINES)


def test_per_token_loop_matches_the_spec() -> None:
    from mamba_backends.reference import ops as spec_ops

    inputs = BUILDERS["selective_scan_fn"](
        {"dim": 8, "N": 4, "seqlens": (5, 3)}, torch.float32, torch.device("cpu")
    )
    a, b = clone_args(inputs.args), clone_args(inputs.args)
    try:
        want = spec_ops.selective_scan_fn(**a)
    except NotImplementedError:
        pytest.skip("the spec's selective_scan_fn is not implemented yet")
    got = bl.selective_scan_loop(**b)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["ssm_states"], a["ssm_states"], rtol=1e-4, atol=1e-5)


def test_cli_quick_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(
        ["bench", "--quick", "--ops", "selective_state_update", "--repeats", "2", "--warmup",
         "0", "--out", str(tmp_path), "--backend", f"mamba2={REF}.ReferenceMamba2Backend"]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "ours/base" in out and "selective_state_update" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["meta"]["repeats"] == 2 and data["meta"]["quick"] is True
    rows = data["rows"]
    assert [r["baseline"] for r in rows] == ["vllm-cpu", "ours (torch)", "spec"]
    assert rows[1]["baseline_status"] != OK  # the spec backend has no separate PyTorch path
    assert "no separate PyTorch path" in rows[1]["note"]
    if rows[2]["baseline_status"] == OK and rows[0]["baseline_status"] != OK:
        # only the weak spec was measured: it is the best there is
        assert {r["best_baseline"] for r in rows} == {"spec"}
        assert rows[0]["ratio_best"] == pytest.approx(rows[2]["ratio"])
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["op"] == "selective_state_update" and r["kind"] == "decode"
        assert r["bytes_moved"] > 0
        if r["ours_status"] == OK and r["baseline_status"] == OK:
            assert r["ratio"] == pytest.approx(r["ours_ms"] / r["baseline_ms"])
            assert r["gbps"] == pytest.approx(r["bytes_moved"] / (r["ours_ms"] * 1e-3) / 1e9)
        else:
            assert r["ratio"] is None
    assert rows[0]["copy_gbps"] is not None and rows[0]["copy_gbps"] > 0


@pytest.mark.vllm
def test_vllm_and_hf_adapters_compute_what_the_spec_computes() -> None:
    """Every quick row's vLLM-CPU / HF baseline, fed through its adapter, agrees with the spec
    (so the benchmark compares like with like: layouts, K-major GDN states, gating)."""
    pytest.importorskip("vllm")
    from mamba_backends.bench.runner import baseline_impl, make_case

    compared = 0
    for spec in CASES["cpu"]["quick"]:
        kinds = [b for b in spec.baselines if b in ("vllm", "vllm-cpp", "hf")]
        if not kinds:
            continue
        dtype = torch.bfloat16 if spec.dtype == "bfloat16" else torch.float32
        ours = baseline_impl("spec", spec.op, spec.mamba_type)
        case, inputs = make_case(spec, dtype, torch.device("cpu"), ours)
        case.baselines = [baseline_impl(k, spec.op, spec.mamba_type) for k in kinds]
        for row in rows_for_case(case, inputs, BenchConfig(repeats=1, warmup=0)):
            if row["ours_status"] == OK and row["baseline_status"] == OK:
                assert row["max_rel_diff"] is not None and row["max_rel_diff"] < 0.02, row
                compared += 1
    assert compared >= 8


def test_shape_table_follows_the_device_not_the_platform_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert table_for("cpu", quick=False) is CASES["cpu"]["full"]
    assert table_for(torch.device("cpu"), quick=True) is CASES["cpu"]["quick"]
    assert table_for("cuda:1", quick=False) is CASES["gpu"]["full"]
    assert table_for("xpu", quick=False) is CASES["gpu"]["full"]
    # The built-in reference platform on a CPU: the CPU table, not the GPU one.
    import mamba_backends.bench.cli as bench_cli

    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "reference")
    asked: list[tuple[Any, bool]] = []

    def spy(device: Any, quick: bool) -> tuple[CaseSpec, ...]:
        asked.append((device, quick))
        return table_for(device, quick)

    monkeypatch.setattr(bench_cli, "table_for", spy)
    assert main(["bench", "--ops", "no_such_op", "--out", str(tmp_path)]) == 2
    assert len(asked) == 1 and table_for(*asked[0]) is CASES["cpu"]["full"]
    assert "no benchmark row" in capsys.readouterr().err
    assert main(["bench", "--device", "xyz", "--out", str(tmp_path)]) == 2
    assert "--device 'xyz'" in capsys.readouterr().err


def test_backend_override_by_name_or_path_takes_its_own_type() -> None:
    from mamba_backends.bench.cli import _backend_overrides

    path = f"{REF}.ReferenceMamba1Backend"
    assert _backend_overrides([path]) == {"mamba1": path}
    assert _backend_overrides(["reference.gdn"]) == {"gdn": "reference.gdn"}
    with pytest.raises(ValueError, match="--backend 'no.such.Backend'"):
        _backend_overrides(["no.such.Backend"])


def test_cli_exits_nonzero_when_nothing_of_ours_was_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference platform serves no backend of its own: every "ours" cell is n/a."""
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "reference")
    rc = main(
        ["bench", "--quick", "--ops", "selective_state_update", "--repeats", "1", "--warmup",
         "0", "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 1
    cap = capsys.readouterr()
    assert "none of our ops was measured" in cap.err
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert rows and all(r["ours_status"] != OK for r in rows)


def test_cli_unknown_option_prints_benchs_own_usage(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("usage: mamba-backends bench ")


def test_best_baseline_ignores_weak_ones_when_a_strong_one_ran() -> None:
    from mamba_backends.bench.runner import mark_best

    def row(name: str, ms: float | None, status: str = OK) -> dict[str, Any]:
        return {"baseline": name, "baseline_ms": ms, "baseline_status": status, "ours_ms": 2.0}

    rows = [row("vllm-cpu", 8.0), row("ours (torch)", 4.0), row("spec", 1.0),
            row("hf-torch", None, "n/a")]  # fmt: skip
    mark_best(rows)
    assert {r["best_baseline"] for r in rows} == {"ours (torch)"}
    assert all(r["ratio_best"] == pytest.approx(0.5) for r in rows)
    weak = [row("spec", 4.0), row("per-token loop", 2.0), row("vllm-cpu", None, "error")]
    mark_best(weak)
    assert weak[0]["best_baseline"] == "per-token loop" and weak[0]["ratio_best"] == 1.0
    none = [row("vllm-cpu", None, "n/a")]
    mark_best(none)
    assert none[0]["best_baseline"] is None and none[0]["ratio_best"] is None
