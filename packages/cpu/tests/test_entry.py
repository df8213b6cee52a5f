"""The torch-op entry of the decode kernels (``native/entry.py``, ``csrc/entry.cpp``).

The entry must be invisible but for speed: on every form it accepts, the results and states
equal the ctypes path's bit for bit; every form it declines, and every bad slot, ends in the
contract's error naming the argument with nothing written; and without it (disabled, no C++
compiler, a failed build) the ctypes path serves and the kit still passes.
"""

from __future__ import annotations

import logging

import pytest
import torch
from cpu_checks import pool

from mamba_backends.contract import ContractError
from mamba_backends.testing.case import run_case
from mamba_backends.testing.cases import fixed_cases
from mamba_backends_cpu.backends import CpuMamba2Backend, CpuShortConvBackend
from mamba_backends_cpu.native import _build
from mamba_backends_cpu.native import conv as _native_conv
from mamba_backends_cpu.native import entry as _entry
from mamba_backends_cpu.ops import conv1d as cpu


@pytest.fixture
def entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.ENV_NATIVE, "1")
    monkeypatch.setenv(_entry.ENV_ENTRY, "1")
    if _native_conv.lib() is None:
        pytest.skip("native conv library unavailable")
    if _entry.ops() is None:
        pytest.fail(f"the torch-op entry did not load: {_entry.status()['reason']}")


def _update(entry_on: bool, monkeypatch: pytest.MonkeyPatch, args: dict) -> tuple:
    """One decode on clones of ``args`` with the entry on or off: (result, states)."""
    monkeypatch.setenv(_entry.ENV_ENTRY, "1" if entry_on else "0")
    a = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    st = args["conv_state"]
    a["conv_state"] = torch.empty_strided(st.shape, st.stride(), dtype=st.dtype).copy_(st)
    res = cpu.causal_conv1d_update(**a)
    return res, a["conv_state"]


def _args(dt: torch.dtype, sdt: torch.dtype, layout: str, idx: str, out: bool, W: int) -> dict:
    gen = torch.Generator().manual_seed(hash((dt, sdt, layout, idx, out, W)) % 1000)
    B, dim, slots = 5, 37, 9
    args: dict = {
        "x": torch.randn(B, dim, generator=gen).to(dt),
        "conv_state": pool(slots, dim, W - 1, sdt, layout, gen),
        "weight": torch.randn(dim, W, generator=gen).to(dt),
        "bias": torch.randn(dim, generator=gen).to(dt) if W != 3 else None,
        "activation": "silu" if W != 2 else None,
    }
    table = {"none": None, "i32": [3, 0, 8, -1, 5], "i64": [7, 2, 0, 4, 1]}[idx]
    if table is not None:
        dtype = torch.int32 if idx == "i32" else torch.int64
        args["conv_state_indices"] = torch.tensor(table, dtype=dtype)
    if out:
        args["out"] = torch.full_like(args["x"], 7.0)  # pad rows are not written
    return args


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sdt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contig", "sd"])
@pytest.mark.parametrize("idx", ["none", "i32", "i64"])
@pytest.mark.parametrize("out", [False, True])
@pytest.mark.parametrize("W", [2, 3, 4])
def test_entry_equals_ctypes_path(entry, monkeypatch, dt, sdt, layout, idx, out, W) -> None:
    """Bit for bit, outputs and the whole state pool (null slot 0 and pad -1 untouched)."""
    args = _args(dt, sdt, layout, idx, out, W)
    y1, s1 = _update(True, monkeypatch, args)
    y0, s0 = _update(False, monkeypatch, args)
    assert torch.equal(y1, y0)
    assert torch.equal(s1, s0)
    if idx != "none":
        assert not torch.equal(s1, args["conv_state"])  # the call did write


def test_entry_runs_on_vllms_decode_form(entry, monkeypatch) -> None:
    """The accepted form is one entry call: the ctypes wrapper is never reached."""
    args = _args(torch.bfloat16, torch.bfloat16, "sd", "i32", True, 4)
    called = []
    monkeypatch.setattr(_native_conv, "conv", lambda *a, **k: called.append(1))
    cpu.causal_conv1d_update(**args)
    assert called == []


def _declined_forms() -> dict[str, tuple[dict, str]]:
    """Forms the entry declines, each with the argument the contract names (None: valid)."""
    base = _args(torch.float32, torch.float32, "sd", "i64", True, 4)
    forms: dict[str, tuple[dict, str]] = {}
    # shapes and dtypes the contract refuses
    forms["x 1-D"] = ({**base, "x": base["x"][0]}, "x")
    forms["weight rows"] = ({**base, "weight": base["weight"][:-1]}, "weight")
    forms["bias size"] = ({**base, "bias": base["bias"][:-1]}, "bias")
    forms["state width"] = ({**base, "conv_state": base["conv_state"][..., :1]}, "conv_state")
    forms["indices rows"] = ({**base, "conv_state_indices": base["conv_state_indices"][:-1]},
                             "conv_state_indices")  # fmt: skip
    forms["indices float"] = ({**base, "conv_state_indices": base["conv_state_indices"].float()},
                              "conv_state_indices")  # fmt: skip
    forms["out dtype"] = ({**base, "out": base["out"].to(torch.float16)}, "out")
    forms["out expanded"] = ({**base, "out": base["out"][:1].expand_as(base["out"])}, "out")
    # aliasing
    st = base["conv_state"]
    forms["out in state"] = ({**base, "out": st[:5, :, 0]}, "out")
    # bad slot values (checked by the kernel, named by the contract)
    bad = base["conv_state_indices"].clone()
    bad[2] = st.shape[0]
    forms["slot range"] = ({**base, "conv_state_indices": bad}, "conv_state_indices")
    dup = base["conv_state_indices"].clone()
    dup[1] = dup[3]
    forms["slot twice"] = ({**base, "conv_state_indices": dup}, "conv_state_indices")
    forms["too few slots"] = (
        {**base, "conv_state_indices": None, "conv_state": st[:3]},
        "conv_state",
    )
    return forms


@pytest.mark.parametrize("form", list(_declined_forms()))
def test_declined_and_bad_forms_get_the_contracts_error(entry, form) -> None:
    args, arg = _declined_forms()[form]
    st = args["conv_state"]
    before = st.clone()
    with pytest.raises(ContractError) as info:
        cpu.causal_conv1d_update(**args)
    assert info.value.arg == arg
    assert torch.equal(st, before)


def test_declined_valid_forms_run_the_python_path(entry, monkeypatch) -> None:
    """2-D indices and fp64 are valid but not the entry's: the result is the ctypes/PyTorch
    path's."""
    args = _args(torch.float32, torch.float32, "contig", "i64", False, 4)
    args2 = {**args, "conv_state_indices": args["conv_state_indices"][:, None].repeat(1, 2)}
    y1, s1 = _update(True, monkeypatch, args2)
    y0, s0 = _update(False, monkeypatch, args)
    assert torch.equal(y1, y0) and torch.equal(s1, s0)
    a64 = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
           for k, v in args.items()}  # fmt: skip
    y, s = _update(True, monkeypatch, a64)
    assert y.dtype == torch.float64 and not torch.equal(s, a64["conv_state"])


@pytest.mark.parametrize("backend", [CpuMamba2Backend, CpuShortConvBackend])
def test_kit_conv_update_on_the_ctypes_path(monkeypatch, backend) -> None:
    """With the entry off, the kit's conv-update grid still passes (the ctypes path serves)."""
    monkeypatch.setenv(_entry.ENV_ENTRY, "0")
    cases = fixed_cases(backend.mamba_type, ops=("causal_conv1d_update",))
    assert cases
    failed = []
    for case in cases:
        res = run_case(backend.ops(), case, torch.device("cpu"), backend)
        if not res.ok and res.status != "skipped":
            failed.append(f"{case.id}: {res.message}")
    assert not failed, failed


def test_status_and_switch(entry, monkeypatch) -> None:
    st = _entry.status()
    assert st["active"] and st["reason"] is None and st["cached"]
    monkeypatch.setenv(_entry.ENV_ENTRY, "0")
    assert _entry.ops() is None
    assert not _entry.status()["active"]


def test_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path, caplog) -> None:
    """A C++ compiler that fails leaves the entry off, says why, and the op still works."""
    monkeypatch.setenv(_build.ENV_NATIVE, "1")
    monkeypatch.setenv(_entry.ENV_ENTRY, "1")
    monkeypatch.setenv(_build.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    monkeypatch.setattr(_entry, "_loaded", _entry._Loaded())
    with caplog.at_level(logging.WARNING, logger=_entry.__name__):
        assert _entry.ops() is None
        assert _entry.ops() is None  # tried once
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert _entry.status()["reason"].startswith("build error")
    if _native_conv.lib() is not None:
        args = _args(torch.float32, torch.float32, "sd", "i32", False, 4)
        y = cpu.causal_conv1d_update(**{**args, "x": args["x"].clone()})
        assert torch.isfinite(y).all()
