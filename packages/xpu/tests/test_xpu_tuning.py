"""The Intel tuning tables: one per Triton op, valid for 16- and 32-wide sub-groups, served
through the core lookup, and taken by each kernel's own config mapping (what the compile check
and launchers use)."""

from __future__ import annotations

import pytest

from mamba_backends.tuning import clear_tuning_cache, configs, lookup
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


@pytest.mark.parametrize("op", sorted(OURS))
def test_entries_are_wave64_configs_of_the_op(op):
    table = OURS[op]
    assert table["op"] == op
    assert [e["device"] for e in table["configs"]] == DEVICES
    (default,) = [e["config"] for e in TRITON[op]["configs"] if e["device"] == "default"]
    for e in table["configs"]:
        cfg = e["config"]
        assert set(cfg) == set(default), (e["device"], "keys differ from the Triton table's")
        warps = {k: v for k, v in cfg.items() if k.endswith("num_warps")}
        assert warps and all(v in (1, 2, 4, 8, 16) for v in warps.values()), warps  # <= 16
        blocks = {k: v for k, v in cfg.items() if k.isupper()}
        assert all(v > 0 and v & (v - 1) == 0 for v in blocks.values()), blocks
        # every work-item of 32-wide sub-groups holds an element (so do 16-wide ones)
        for block, w in PER_LANE_BLOCKS:
            if block in cfg and (op != "causal_conv1d_fn" or block != "BLOCK_D"):
                assert cfg[block] >= 32 * cfg[w], (e["device"], block, cfg)


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
