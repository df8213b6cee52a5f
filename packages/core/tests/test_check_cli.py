"""``mamba-backends check``: table shape, JSON, and the exit-code logic.

The first tests use a fake backend and fake cases with hand-computed expectations, so they do
not depend on anyone's ops: a deliberately wrong op must fail the check and exit 1, and the
right op must pass and exit 0. Later tests drive the real quick cases.
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest
import torch

import mamba_backends.testing.cli as check_cli
import mamba_backends.testing.runner as runner
from mamba_backends.backend import OP_NAMES, MambaBackend
from mamba_backends.cli import main
from mamba_backends.reference import ops as ref_ops
from mamba_backends.testing.case import Case, CaseContext

FAKE_MODULE = "fake_check_cli_ops"


class FakeShortConv(MambaBackend):
    name = "fake.short_conv"
    mamba_type = "short_conv"
    supported_devices = ("cpu",)
    ops_module = FAKE_MODULE


def _add_one_case(ctx: CaseContext) -> None:
    """The op must compute x + 1; the expectation is written out by hand."""
    out = ctx.ops.causal_conv1d_fn(torch.tensor([1.0, 2.0, 3.0]))
    ctx.check.close("out", out, torch.tensor([2.0, 3.0, 4.0]))


def _update_case(ctx: CaseContext) -> None:
    out = ctx.ops.causal_conv1d_update(torch.tensor([5.0]))
    ctx.check.close("out", out, torch.tensor([6.0]))


FAKE_CASES = [
    Case(op="causal_conv1d_fn", kind="oneshot", body=_add_one_case, quick=True),
    Case(op="causal_conv1d_update", kind="oneshot", body=_update_case, quick=True),
]


def _install(monkeypatch: pytest.MonkeyPatch, **ops: Any) -> None:
    mod = types.ModuleType(FAKE_MODULE)
    for name, fn in ops.items():
        setattr(mod, name, fn)
    monkeypatch.setitem(sys.modules, FAKE_MODULE, mod)
    MambaBackend._ops_cache.pop(FakeShortConv, None)
    monkeypatch.setattr(check_cli, "get_mamba_backend", lambda t: FakeShortConv)


def _fake_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "cases_for", lambda backend, quick=False: list(FAKE_CASES))


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["check", "--types", "short_conv", *args])
    return rc, capsys.readouterr().out


def _rows(out: str) -> dict[str, list[str]]:
    """op -> the table row's cells (split on runs of 2+ spaces)."""
    import re

    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 7 and cells[0] == "short_conv":
            rows[cells[2]] = cells
    return rows


def test_wrong_op_fails_the_check(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    _fake_cases(monkeypatch)
    _install(
        monkeypatch,
        causal_conv1d_fn=lambda x: x * 2,  # wrong on purpose
        causal_conv1d_update=lambda x: x + 1,
    )
    rc, out = _check(capsys)
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("mamba-backends check: platform ")
    assert lines[1].split() == [
        "type",
        "backend",
        "op",
        "status",
        "cases",
        "max|err|",
        "err/tol",
        "detail",
    ]
    rows = _rows(out)
    assert set(rows) == set(OP_NAMES["short_conv"])
    fn, up = rows["causal_conv1d_fn"], rows["causal_conv1d_update"]
    assert fn[1] == "fake.short_conv" and fn[3] == "FAIL" and fn[4] == "0/1"
    assert float(fn[5]) == pytest.approx(2.0)  # |2*3 - 4|, by hand
    assert "out" in fn[7]
    assert up[3] == "pass" and up[4] == "1/1" and float(up[5]) == 0.0
    assert lines[-1] == "result: FAIL (1 of 2 ops not passing)"


def test_right_ops_pass_and_exit_zero(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    _fake_cases(monkeypatch)
    _install(monkeypatch, causal_conv1d_fn=lambda x: x + 1, causal_conv1d_update=lambda x: x + 1)
    rc, out = _check(capsys)
    assert rc == 0
    assert out.splitlines()[-1] == "result: PASS"
    assert all(r[3] == "pass" for r in _rows(out).values())


def test_missing_op_is_a_not_implemented_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _fake_cases(monkeypatch)
    _install(monkeypatch, causal_conv1d_fn=lambda x: x + 1)
    rc, out = _check(capsys)
    assert rc == 1
    row = _rows(out)["causal_conv1d_update"]
    assert row[3] == "not implemented"
    assert "causal_conv1d_update" in row[-1]


def test_json_output(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    _fake_cases(monkeypatch)
    _install(monkeypatch, causal_conv1d_fn=lambda x: x * 2, causal_conv1d_update=lambda x: x + 1)
    rc, out = _check(capsys, "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["ok"] is False and doc["subset"] == "quick"
    by_op = {r["op"]: r for r in doc["results"]}
    assert set(by_op) == set(OP_NAMES["short_conv"])
    assert by_op["causal_conv1d_fn"]["status"] == "FAIL" and not by_op["causal_conv1d_fn"]["ok"]
    assert by_op["causal_conv1d_update"]["status"] == "pass" and by_op["causal_conv1d_update"]["ok"]
    keys = {"mamba_type", "backend", "op", "status", "passed", "total", "max_abs_err", "max_ratio"}
    assert keys <= set(by_op["causal_conv1d_fn"])


def test_bad_types_option(capsys: Any) -> None:
    assert main(["check", "--types", "mamba3"]) == 2
    assert "mamba3" in capsys.readouterr().err


def test_backend_that_cannot_be_selected_is_an_error_row(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    def boom(t: str) -> Any:
        raise ImportError("vendor package broken")

    monkeypatch.setattr(check_cli, "get_mamba_backend", boom)
    rc, out = _check(capsys)
    assert rc == 1
    rows = _rows(out)
    assert {r[3] for r in rows.values()} == {"error"}
    assert "vendor package broken" in rows["causal_conv1d_fn"][-1]


def test_real_quick_cases_catch_a_wrong_conv(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The real quick subset, with the spec's conv made wrong by 0.05 on purpose."""

    def wrong_fn(*a: Any, **k: Any) -> Any:
        return ref_ops.causal_conv1d_fn(*a, **k) + 0.05

    _install(
        monkeypatch, causal_conv1d_fn=wrong_fn, causal_conv1d_update=ref_ops.causal_conv1d_update
    )
    rc, out = _check(capsys)
    rows = _rows(out)
    assert rc == 1
    assert rows["causal_conv1d_fn"][3] == "FAIL"
    assert rows["causal_conv1d_update"][3] == "FAIL"  # its split case runs the prefill too
    _install(
        monkeypatch,
        causal_conv1d_fn=ref_ops.causal_conv1d_fn,
        causal_conv1d_update=ref_ops.causal_conv1d_update,
    )
    rc, out = _check(capsys)
    assert rc == 0, out


def test_current_platform_table_shape(capsys: Any) -> None:
    """Whatever the installed backends do, one row per op and rc 0 iff every row passes."""
    rc = main(["check", "--types", "mamba2,short_conv", "--json"])
    doc = json.loads(capsys.readouterr().out)
    results = doc["results"]
    expected = [("mamba2", op) for op in OP_NAMES["mamba2"]]
    expected += [("short_conv", op) for op in OP_NAMES["short_conv"]]
    assert [(r["mamba_type"], r["op"]) for r in results] == expected
    assert doc["ok"] == all(r["ok"] for r in results)
    assert rc == (0 if doc["ok"] else 1)


# --- errors the user makes: a message and exit code 2, never a traceback -------------------


def test_unknown_device_string_is_a_message_and_exit_2(capsys: Any) -> None:
    assert main(["check", "--types", "short_conv", "--device", "xyz"]) == 2
    cap = capsys.readouterr()
    assert "--device 'xyz': not a torch device" in cap.err
    assert "Traceback" not in cap.err and cap.out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is usable here")
def test_absent_device_says_why_once_and_runs_nothing(capsys: Any) -> None:
    assert main(["check", "--device", "cuda"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""  # no table of identical error rows
    assert cap.err.count("\n") == 1
    assert "--device 'cuda': not usable here" in cap.err and "CUDA" in cap.err


def test_one_shared_failure_reason_is_printed_in_full_once(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    reason = "the accelerator runtime refused the call: " + "x" * 120  # wider than the column
    _fake_cases(monkeypatch)

    def refuse(*a: Any, **k: Any) -> Any:
        raise RuntimeError(reason)

    _install(monkeypatch, causal_conv1d_fn=refuse, causal_conv1d_update=refuse)
    rc, out = _check(capsys)
    assert rc == 1
    lines = out.splitlines()
    assert lines[1].startswith("every failing op failed the same way: ")
    assert reason in lines[1]
    assert sum(reason in line for line in lines) == 1  # the rows show it truncated


def test_forced_unknown_platform_is_a_message_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "bogus")
    assert main(["check", "--types", "short_conv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamba-backends check: MAMBA_BACKENDS_PLATFORM='bogus' names no ")
    assert "Traceback" not in err


def test_unknown_option_prints_checks_own_usage(capsys: Any) -> None:
    assert main(["check", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mamba-backends check ")
    assert "mamba-backends check: error: unrecognized arguments: --bogus" in err
