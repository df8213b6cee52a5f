"""The AMD tuning tables: one per Triton op, valid for wave64, served through the core lookup,
and taken by each kernel's own config mapping (what the compile check and launchers use), AMD
launch options (``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack``) included."""

from __future__ import annotations

import copy

import pytest

from mamba_backends.tuning import TuningError, clear_tuning_cache, configs, lookup
from mamba_backends_triton._options import VENDOR_KEYS, VENDOR_OPTIONS
from mamba_backends_triton.testing import (
    LOOKUP_KEYS,
    PER_LANE_BLOCKS,
    check_kernels_map_every_entry,
    tuning_tables,
)

DEVICES = ["hip:gfx90a", "hip:gfx942", "hip:gfx950", "hip:default"]
OURS = tuning_tables("mamba_backends_rocm.tuning")
TRITON = tuning_tables("mamba_backends_triton.tuning")


def test_every_triton_op_has_an_amd_table():
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
        assert set(cfg) - VENDOR_KEYS == set(default), (e["device"], "keys differ from Triton's")
        vendor = set(cfg) & VENDOR_KEYS
        assert vendor <= set(VENDOR_OPTIONS["hip:"]), (e["device"], vendor)  # AMD options only
        warps = {k: v for k, v in cfg.items() if k.endswith("num_warps")}
        assert warps and all(v in (1, 2, 4, 8, 16) for v in warps.values()), warps  # <= 16
        blocks = {k: v for k, v in cfg.items() if k.isupper()}
        assert all(v > 0 and v & (v - 1) == 0 for v in blocks.values()), blocks
        # wave64: a 1-D block of channels/elements covers every lane of its warps
        for block, w in PER_LANE_BLOCKS:
            if block in cfg and (op != "causal_conv1d_fn" or block != "BLOCK_D"):
                assert cfg[block] >= 64 * cfg[w], (e["device"], block, cfg)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(OURS))
def test_the_core_lookup_serves_our_entries(op, device):
    clear_tuning_cache()
    (want,) = [e["config"] for e in OURS[op]["configs"] if e["device"] == device]
    assert lookup(op, device, **LOOKUP_KEYS[op]) == want
    assert (device, want) in configs(op, "hip:")  # what the compile check compiles


def test_other_amd_archs_fall_back_to_the_rocm_default():
    (want,) = [e["config"] for e in OURS["selective_scan_fn"]["configs"]
               if e["device"] == "hip:default"]  # fmt: skip
    assert lookup("selective_scan_fn", "hip:gfx1100", **LOOKUP_KEYS["selective_scan_fn"]) == want


def test_each_kernel_maps_every_entry():
    check_kernels_map_every_entry(OURS)


def _with(key, value, device=None):
    """Our tables with ``key: value`` in every entry (of ``device`` only, when given)."""
    tables = copy.deepcopy(OURS)
    for table in tables.values():
        for e in table["configs"]:
            if device is None or e["device"] == device:
                e["config"][key] = value
    return tables


def test_amd_options_map_through_every_kernel():
    """An entry with AMD options is taken by every kernel's mapping, the options forwarded."""
    check_kernels_map_every_entry(_with("waves_per_eu", 2))
    check_kernels_map_every_entry(_with("matrix_instr_nonkdim", 16, "hip:gfx942"))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("grf_mode", "auto", r"device 'hip:gfx90a': launch option 'grf_mode' is an Intel"),
        ("waves_per_eu", 0, r"'waves_per_eu' = 0 is not one of"),  # omit the key: no hint
        ("kpack", 4, r"'kpack' = 4 is not one of"),
        ("matrix_instr_nonkdim", 8, r"'matrix_instr_nonkdim' = 8 is not one of"),
    ],
)
def test_a_misplaced_key_or_bad_value_fails_the_table_check(key, value, match):
    with pytest.raises(TuningError, match=match):
        check_kernels_map_every_entry(_with(key, value))
