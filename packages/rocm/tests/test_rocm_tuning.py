"""The AMD tuning tables: one per Triton op, valid for wave64, served through the core lookup,
and taken by each kernel's own config mapping (what the compile check and launchers use)."""

from __future__ import annotations

import importlib
import json
from importlib import resources

import pytest

from mamba_backends.tuning import clear_tuning_cache, configs, lookup

DEVICES = ["hip:gfx90a", "hip:gfx942", "hip:gfx950", "hip:default"]
#: Shape keys each op's launcher looks up with (a real model layer's).
KEYS = {
    "causal_conv1d_fn": {"dim": 5376, "width": 4},
    "causal_conv1d_update": {"dim": 5376, "width": 4},
    "chunk_gated_delta_rule": {"K": 128, "V": 128},
    "lightning_attention": {"D": 128, "E": 128},
    "fused_gdn_gating": {"heads": 32},
    "fused_recurrent_gated_delta_rule": {"K": 128, "V": 128},
    "linear_decode_forward": {"D": 128},
    "mamba_chunk_scan_combined_varlen": {"headdim": 64, "dstate": 128, "chunk_size": 256},
    "selective_scan_fn": {"dim": 5120, "dstate": 16},
    "selective_state_update": {"dstate": 128, "headdim": 64},
}


def _tables(package: str) -> dict[str, dict]:
    folder = resources.files(package)
    return {
        f.name.removesuffix(".json"): json.loads(f.read_text())
        for f in folder.iterdir()
        if f.name.endswith(".json")
    }


#: A 1-D block and the warps that share it.
PER_LANE_BLOCKS = (
    ("BLOCK_D", "num_warps"),
    ("TILE", "num_warps"),
    ("EDGE_BLOCK_D", "edge_num_warps"),
    ("SNAP_BLOCK", "snap_num_warps"),
)
OURS = _tables("mamba_backends_rocm.tuning")
TRITON = _tables("mamba_backends_triton.tuning")


def test_every_triton_op_has_an_amd_table():
    assert set(OURS) == set(TRITON)
    assert set(KEYS) == set(TRITON), "a new Triton op: add its lookup keys here"


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
        # wave64: a 1-D block of channels/elements covers every lane of its warps
        for block, w in PER_LANE_BLOCKS:
            if block in cfg and (op != "causal_conv1d_fn" or block != "BLOCK_D"):
                assert cfg[block] >= 64 * cfg[w], (e["device"], block, cfg)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(OURS))
def test_the_core_lookup_serves_our_entries(op, device):
    clear_tuning_cache()
    (want,) = [e["config"] for e in OURS[op]["configs"] if e["device"] == device]
    assert lookup(op, device, **KEYS[op]) == want
    assert (device, want) in configs(op, "hip:")  # what the compile check compiles


def test_other_amd_archs_fall_back_to_the_rocm_default():
    (want,) = [e["config"] for e in OURS["selective_scan_fn"]["configs"]
               if e["device"] == "hip:default"]  # fmt: skip
    assert lookup("selective_scan_fn", "hip:gfx1100", **KEYS["selective_scan_fn"]) == want


def test_each_kernel_maps_every_entry():
    from mamba_backends_triton.compile_check import KERNEL_MODULES

    checked = set()
    for name in KERNEL_MODULES:
        for check in importlib.import_module(name).COMPILE_CHECKS:
            for e in OURS[check.op]["configs"]:
                for variant in check.variants:
                    blocks, options = check.launch(e["config"], variant.constexprs)
                    assert 1 <= options["num_warps"] <= 16
                    assert all(isinstance(v, int) for v in blocks.values())
            checked.add(check.op)
    # Ops whose kernels are not in KERNEL_MODULES yet are not compile-checked (see the README).
    assert checked <= set(OURS) and len(checked) >= 8
