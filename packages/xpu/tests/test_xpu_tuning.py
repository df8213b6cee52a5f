"""The Intel tuning tables: one per Triton op, valid for 16- and 32-wide sub-groups, served
through the core lookup, and taken by each kernel's own config mapping (what the compile check
and launchers use), Triton-XPU's ``warp_size``/``grf_mode`` included, which reach an Intel
launch only."""

from __future__ import annotations

import copy

import pytest
import torch

from mamba_backends.tuning import TuningError, clear_tuning_cache, configs, lookup
from mamba_backends_triton import _launch
from mamba_backends_triton._options import VENDOR_KEYS, VENDOR_OPTIONS
from mamba_backends_triton.testing import (
    LOOKUP_KEYS,
    PER_LANE_BLOCKS,
    check_kernels_map_every_entry,
    tuning_tables,
)

DEVICES = ["xpu:default"]
OURS = tuning_tables("mamba_backends_xpu.tuning")
TRITON = tuning_tables("mamba_backends_triton.tuning")


def test_every_triton_op_has_an_xpu_table():
    assert set(OURS) == set(TRITON)
    assert set(LOOKUP_KEYS) == set(TRITON), "a new Triton op: add its lookup keys here"


#: The Intel launch options of each table (untimed first choices; see the tables' notes).
LAUNCH_OPTIONS = {
    "causal_conv1d_fn": {"warp_size": 16},
    "causal_conv1d_update": {"warp_size": 16},
    "chunk_gated_delta_rule": {"grf_mode": "auto"},
    "fused_gdn_gating": {"warp_size": 16},
    "fused_recurrent_gated_delta_rule": {"warp_size": 16, "grf_mode": "auto"},
    "lightning_attention": {"grf_mode": "auto"},
    "linear_decode_forward": {"warp_size": 16},
    "mamba_chunk_scan_combined_varlen": {"grf_mode": "auto"},
    "selective_scan_fn": {"warp_size": 16},
    "selective_state_update": {"warp_size": 16, "grf_mode": "auto"},
}


@pytest.mark.parametrize("op", sorted(OURS))
def test_entries_are_xe_configs_of_the_op(op):
    table = OURS[op]
    assert table["op"] == op
    assert [e["device"] for e in table["configs"]] == DEVICES
    (default,) = [e["config"] for e in TRITON[op]["configs"] if e["device"] == "default"]
    for e in table["configs"]:
        cfg = e["config"]
        assert set(cfg) - VENDOR_KEYS == set(default), (e["device"], "keys differ from Triton's")
        vendor = {k: v for k, v in cfg.items() if k in VENDOR_KEYS}
        assert vendor == LAUNCH_OPTIONS[op], (e["device"], vendor)
        assert set(vendor) <= set(VENDOR_OPTIONS["xpu:"]), vendor  # Intel options only
        warps = {k: v for k, v in cfg.items() if k.endswith("num_warps")}
        assert warps and all(v in (1, 2, 4, 8, 16) for v in warps.values()), warps  # <= 16
        blocks = {k: v for k, v in cfg.items() if k.isupper()}
        assert all(v > 0 and v & (v - 1) == 0 for v in blocks.values()), blocks
        # every work-item of 32-wide sub-groups holds an element (so do 16-wide ones)
        for block, w in PER_LANE_BLOCKS:
            if block in cfg and (op != "causal_conv1d_fn" or block != "BLOCK_D"):
                assert cfg[block] >= 32 * cfg[w], (e["device"], block, cfg)
                assert cfg[block] >= cfg.get("warp_size", 32) * cfg[w], (e["device"], block)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(OURS))
def test_the_core_lookup_serves_our_entries(op, device):
    clear_tuning_cache()
    (want,) = [e["config"] for e in OURS[op]["configs"] if e["device"] == device]
    assert lookup(op, device, **LOOKUP_KEYS[op]) == want
    assert (device, want) in configs(op, "xpu:")  # what the compile check compiles


def test_any_intel_arch_takes_the_xpu_default():
    (want,) = [e["config"] for e in OURS["selective_scan_fn"]["configs"]]
    assert (
        lookup("selective_scan_fn", "xpu:intel_gpu_pvc", **LOOKUP_KEYS["selective_scan_fn"]) == want
    )


def test_each_kernel_maps_every_entry():
    check_kernels_map_every_entry(OURS)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("waves_per_eu", 2, r"device 'xpu:default': launch option 'waves_per_eu' is an AMD"),
        ("grf_mode", "large", r"'grf_mode' = 'large' is not one of"),  # the pre-2025-11 name
        ("warp_size", 8, r"'warp_size' = 8 is not one of"),
    ],
)
def test_a_misplaced_key_or_bad_value_fails_the_table_check(key, value, match):
    bad = copy.deepcopy(OURS)
    bad["causal_conv1d_update"]["configs"][0]["config"][key] = value
    with pytest.raises(TuningError, match=match):
        check_kernels_map_every_entry(bad)


def test_the_options_reach_an_intel_launch_only(monkeypatch):
    """On an Intel GPU the launch gets grf_mode/warp_size; in the interpreter (CPU tensors,
    ``MAMBA_BACKENDS_TRITON_TUNING_DEVICE=xpu:default``) it does not; NVIDIA never sees them."""
    op = "fused_recurrent_gated_delta_rule"
    clear_tuning_cache()
    (want,) = [e["config"] for e in OURS[op]["configs"]]
    monkeypatch.setenv(_launch.TUNING_DEVICE_ENV, "xpu:default")
    plain = {k: v for k, v in want.items() if k not in VENDOR_KEYS}
    assert _launch.launch_config(op, torch.device("cpu"), **LOOKUP_KEYS[op]) == plain
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(_launch, "device_name", lambda device: "xpu:default")
    assert _launch.launch_config(op, torch.device("xpu", 0), **LOOKUP_KEYS[op]) == want
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(TuningError, match="'warp_size' is an Intel .* NVIDIA"):
        _launch.launch_config(op, torch.device("cuda", 0), **LOOKUP_KEYS[op])
