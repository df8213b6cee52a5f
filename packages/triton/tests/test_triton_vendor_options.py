"""Vendor launch options (``waves_per_eu`` on ``hip:``, ``grf_mode``/``warp_size`` on ``xpu:``):
every kernel module's mapping forwards them, they are accepted only in their vendor's entries
with an allowed value, and a launch passes them only on that vendor's GPU."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mamba_backends import tuning
from mamba_backends.tuning import TuningError
from mamba_backends_triton import _launch
from mamba_backends_triton._aot import blocks_and_options
from mamba_backends_triton._options import (
    VENDOR_KEYS,
    VENDOR_OPTIONS,
    check_config,
    for_backend,
    launch_options,
)

PLAIN = {"BLOCK_D": 256, "num_warps": 4, "num_stages": 1, "snap_num_warps": 2}
HIP = {**PLAIN, "waves_per_eu": 2, "kpack": 2}
XPU = {**PLAIN, "warp_size": 16, "grf_mode": "256"}
OP = "vendor_probe_op"  # a table of its own, in MAMBA_BACKENDS_TUNING_DIR


def test_the_table_names_each_vendor_option_once():
    assert set(VENDOR_OPTIONS) == {"hip:", "xpu:"}
    assert set(VENDOR_OPTIONS["hip:"]) == {"waves_per_eu", "matrix_instr_nonkdim", "kpack"}
    assert set(VENDOR_OPTIONS["xpu:"]) == {"warp_size", "grf_mode"}
    assert len(VENDOR_KEYS) == 5


def test_the_helper_forwards_warps_stages_and_the_vendor_options():
    assert launch_options(PLAIN) == {"num_warps": 4, "num_stages": 1}
    assert launch_options(PLAIN, "snap_num_warps", None) == {"num_warps": 2}
    assert launch_options(HIP) == {"num_warps": 4, "num_stages": 1, "waves_per_eu": 2, "kpack": 2}
    assert launch_options(XPU, "snap_num_warps", None) == {
        "num_warps": 2, "warp_size": 16, "grf_mode": "256"
    }  # fmt: skip
    with pytest.raises(KeyError):
        launch_options({"num_stages": 1})  # num_warps is required, as before
    # the plain mapping: optional warps/stages, upper-case blocks, vendor options
    assert blocks_and_options({"BLOCK_D": 64}, {}) == ({"BLOCK_D": 64}, {})
    assert blocks_and_options(HIP, {}) == (
        {"BLOCK_D": 256},
        {"num_warps": 4, "num_stages": 1, "waves_per_eu": 2, "kpack": 2},
    )


def test_every_kernel_mapping_forwards_the_vendor_options():
    import importlib

    from mamba_backends_triton.compile_check import KERNEL_MODULES

    for name in KERNEL_MODULES:
        for check in importlib.import_module(name).COMPILE_CHECKS:
            # an AMD entry when the ROCm package is installed, else the op's default entry
            # (`nox -s test-triton` installs the Triton package alone)
            (device, cfg), *_ = tuning.configs(check.op, "hip:") or tuning.configs(check.op)
            for extra in ({"waves_per_eu": 4}, {"grf_mode": "auto", "warp_size": 16}):
                for variant in check.variants:
                    _, plain = check.launch(cfg, variant.constexprs)
                    _, options = check.launch({**cfg, **extra}, variant.constexprs)
                    assert options == {**plain, **extra}, (check.kernel.__name__, options)


@pytest.mark.parametrize(
    ("device", "cfg", "match"),
    [
        ("xpu:default", {**PLAIN, "waves_per_eu": 2}, "'waves_per_eu' is an AMD \\(hip:\\) option"),
        ("hip:gfx942", {**PLAIN, "grf_mode": "auto"}, "'grf_mode' is an Intel \\(xpu:\\) option"),
        ("cuda:sm90", {**PLAIN, "kpack": 2}, "'kpack' is an AMD \\(hip:\\) option"),
        ("default", {**PLAIN, "warp_size": 16}, "'warp_size' is an Intel \\(xpu:\\) option"),
        ("hip:default", {**PLAIN, "waves_per_eu": 9}, r"'waves_per_eu' = 9 is not one of"),
        ("hip:gfx942", {**PLAIN, "waves_per_eu": True}, r"= True is not one of"),
        ("xpu:default", {**PLAIN, "grf_mode": "large"}, r"'grf_mode' = 'large' is not one of"),
        ("xpu:default", {**PLAIN, "warp_size": 64}, r"'warp_size' = 64 is not one of"),
    ],
)
def test_a_misplaced_key_or_bad_value_names_op_device_and_key(device, cfg, match):
    with pytest.raises(TuningError, match=match) as err:
        check_config("some_op", device, cfg)
    assert f"tuning op 'some_op', device {device!r}" in str(err.value)


def test_allowed_values_pass():
    check_config("some_op", "hip:gfx942", HIP)
    check_config("some_op", "xpu:default", XPU)
    check_config("some_op", "cuda:sm90", PLAIN)
    check_config("some_op", "default", PLAIN)


def test_a_compile_or_launch_of_another_vendor_refuses_them():
    assert for_backend("op", "hip:gfx942", launch_options(HIP), "hip:")["waves_per_eu"] == 2
    with pytest.raises(
        TuningError,
        match="'waves_per_eu' is an AMD \\(hip:\\) option .* NVIDIA \\(cuda:\\) compile",
    ):
        for_backend("op", "hip:gfx942", launch_options(HIP), "cuda:")
    assert for_backend("op", "cuda:sm90", launch_options(PLAIN), "cuda:") == launch_options(PLAIN)


def _table(monkeypatch, tmp_path, entries):
    (tmp_path / f"{OP}.json").write_text(json.dumps({"op": OP, "configs": entries}))
    monkeypatch.setenv(tuning.ENV_DIR, str(tmp_path))
    tuning.clear_tuning_cache()


@pytest.fixture
def tables(monkeypatch, tmp_path):
    """A vendor-neutral default, an AMD entry with waves_per_eu, an Intel one with grf_mode."""
    _table(monkeypatch, tmp_path, [
        {"device": "default", "config": PLAIN},
        {"device": "hip:gfx942", "config": HIP},
        {"device": "xpu:default", "config": XPU},
    ])  # fmt: skip
    monkeypatch.delenv(_launch.TUNING_DEVICE_ENV, raising=False)
    yield monkeypatch
    monkeypatch.delenv(tuning.ENV_DIR)
    tuning.clear_tuning_cache()


def _on_gpu(mp, name: str, hip: str | None) -> None:
    """Launches as on a real GPU whose tuning name is ``name`` (torch.version.hip=``hip``)."""
    mp.setattr(_launch, "interpreting", lambda: False)
    mp.setattr(_launch, "device_name", lambda device: name)
    mp.setattr(torch.version, "hip", hip)


def test_a_launch_on_the_vendors_gpu_gets_its_options(tables):
    _on_gpu(tables, "hip:gfx942", "6.3")
    assert _launch.launch_config(OP, torch.device("cuda", 0)) == HIP
    _on_gpu(tables, "xpu:default", None)
    assert _launch.launch_config(OP, torch.device("xpu", 0)) == XPU
    _on_gpu(tables, "cuda:sm90", None)
    assert _launch.launch_config(OP, torch.device("cuda", 0)) == PLAIN


def test_the_interpreter_and_cpu_tensors_do_not_get_them(tables, caplog):
    cpu = torch.device("cpu")
    for name, cfg in (("hip:gfx942", HIP), ("xpu:default", XPU)):
        tables.setenv(_launch.TUNING_DEVICE_ENV, name)
        assert tuning.lookup(OP, name) == cfg  # the table has them...
        with caplog.at_level(logging.DEBUG, logger=_launch.__name__):
            assert _launch.launch_config(OP, cpu) == PLAIN  # ...the launch does not
    tables.setattr(_launch, "interpreting", lambda: True)
    tables.setenv(_launch.TUNING_DEVICE_ENV, "hip:gfx942")
    assert _launch.launch_config(OP, torch.device("cuda", 0)) == PLAIN


def test_a_config_bound_for_another_vendors_gpu_is_an_error(tables):
    _on_gpu(tables, "hip:gfx942", None)  # tables of hip:gfx942, but an Intel device
    with pytest.raises(
        TuningError,
        match="'waves_per_eu' is an AMD \\(hip:\\) option .* Intel \\(xpu:\\) compile or",
    ):
        _launch.launch_config(OP, torch.device("xpu", 0))
    _on_gpu(tables, "xpu:default", None)  # tables of xpu, tensors on NVIDIA
    with pytest.raises(TuningError, match="device 'xpu:default': launch option 'warp_size'"):
        _launch.launch_config(OP, torch.device("cuda", 0))


def test_a_misplaced_key_in_any_entry_fails_the_first_lookup(monkeypatch, tmp_path):
    """Every entry of the op is checked at its first lookup, whatever device asks."""
    _table(monkeypatch, tmp_path, [
        {"device": "default", "config": PLAIN},
        {"device": "xpu:default", "config": {**PLAIN, "waves_per_eu": 2}},
    ])  # fmt: skip
    try:
        want = r"op 'vendor_probe_op', device 'xpu:default'.*'waves_per_eu' is an AMD \(hip:\)"
        with pytest.raises(TuningError, match=want):
            _launch.launch_config(OP, torch.device("cpu"))
        _table(monkeypatch, tmp_path, [{"device": "cuda:default", "config": HIP}])
        with pytest.raises(TuningError, match="device 'cuda:default'.*'waves_per_eu'"):
            _launch.launch_config(OP, torch.device("cpu"))
        _table(monkeypatch, tmp_path, [{"device": "default", "config": {**PLAIN, "kpack": 3}}])
        with pytest.raises(
            TuningError, match="device 'default'.*'kpack' is an AMD \\(hip:\\) option"
        ):
            _launch.launch_config(OP, torch.device("cpu"))
    finally:
        monkeypatch.delenv(tuning.ENV_DIR)
        tuning.clear_tuning_cache()


def test_an_override_is_checked_against_the_device_it_serves(tables):
    tables.setenv(_launch.TUNING_DEVICE_ENV, "xpu:default")  # the interpreter, Intel tables
    with tuning.override(OP, HIP):  # device=None: serves every device; not in the tables
        with pytest.raises(TuningError, match="device 'xpu:default'.*'waves_per_eu'"):
            _launch.launch_config(OP, torch.device("cpu"))  # an error, not a drop
    _on_gpu(tables, "xpu:default", None)
    with tuning.override(OP, HIP):
        with pytest.raises(TuningError, match="device 'xpu:default'.*'waves_per_eu'"):
            _launch.launch_config(OP, torch.device("xpu", 0))
        _on_gpu(tables, "hip:gfx942", "6.3")
        assert _launch.launch_config(OP, torch.device("cuda", 0)) == HIP
