"""``triton.mamba1``: registered by short name, exposes the Mamba1 ops, and every device finds
tuning configs for its kernels that fit the kernels' mappings."""

from __future__ import annotations

import pytest

from mamba_backends.selector import registered_backend_names, resolve_selected_backend
from mamba_backends.tuning import configs, lookup
from mamba_backends_triton.backends import TritonMamba1Backend
from mamba_backends_triton.compile_check import KERNEL_MODULES, TARGETS
from mamba_backends_triton.ops.selective_scan import scan
from mamba_backends_triton.ops.state_update import update


def test_short_name_and_ops():
    assert registered_backend_names()["triton.mamba1"] == (
        "mamba_backends_triton.backends.TritonMamba1Backend"
    )
    assert resolve_selected_backend("triton.mamba1") is TritonMamba1Backend
    ops = TritonMamba1Backend.ops()
    assert set(TritonMamba1Backend.op_names()) == {
        "causal_conv1d_fn", "causal_conv1d_update", "selective_scan_fn", "selective_state_update",
    }  # fmt: skip
    for name in TritonMamba1Backend.op_names():
        assert callable(getattr(ops, name))


def test_the_compile_check_covers_both_kernels():
    assert {scan.__name__, update.__name__} <= set(KERNEL_MODULES)


@pytest.mark.parametrize("device", [t.name for t in TARGETS] + ["cuda:sm86", "xpu:default"])
@pytest.mark.parametrize("N", [1, 16, 128, 256])
def test_every_device_finds_configs_the_kernels_can_use(device, N):
    bn = 1 << max(N - 1, 0).bit_length()
    cfg = lookup(update.OP, device, dstate=N, headdim=64)
    blocks, options = update._launch(cfg, {"BLOCK_N": bn})
    assert blocks["BLOCK_P"] >= 1 and blocks["BLOCK_P"] & (blocks["BLOCK_P"] - 1) == 0
    assert options["num_warps"] in (1, 2, 4, 8, 16)
    sblocks, soptions = update._snap_launch(cfg, {})
    assert sblocks["BLOCK_E"] & (sblocks["BLOCK_E"] - 1) == 0 and soptions["num_warps"] >= 1
    cfg = lookup(scan.OP, device, dim=5120, dstate=N)
    blocks, options = scan._launch(cfg, {"BLOCK_N": bn})
    assert blocks["BLOCK_D"] >= 1 and blocks["BLOCK_D"] & (blocks["BLOCK_D"] - 1) == 0
    assert options["num_warps"] in (1, 2, 4, 8, 16)


def test_cuda_tables_cover_the_archs():
    for op in (update.OP, scan.OP):
        devices = {d for d, _ in configs(op, "cuda:")}
        assert {"cuda:sm80", "cuda:sm90", "cuda:sm100", "cuda:default"} <= devices
        assert any(d == "default" for d, _ in configs(op))


def test_divisible_ints_specialise_like_the_jit():
    # vLLM's Mamba2 decode variant: with its sizes and strides known to be multiples of 16
    # the state tile is read in 128-bit accesses, which the register count shows; without
    # that knowledge (every int an unknown i32) the same kernel needs far more registers.
    import json
    import os
    import subprocess
    import sys

    script = """
import dataclasses, json
from mamba_backends_triton import compile_check as cc
cc._prepare_env()
from mamba_backends_triton.ops.state_update import update
mod = "mamba_backends_triton.ops.state_update.update"
cfg = {"TILE": 2048, "num_warps": 4, "num_stages": 1}
check = update.COMPILE_CHECKS[0]
plain = dataclasses.replace(check.variants[0], divisible=())
update.COMPILE_CHECKS = (dataclasses.replace(check, variants=(check.variants[0], plain)),)
rows = [cc.compile_one((mod, 0, v, "test", cfg, "cuda:sm90")) for v in (0, 1)]
print(json.dumps([r.__dict__ for r in rows]))
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False,
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    divisible, plain = json.loads(res.stdout.strip().splitlines()[-1])
    assert divisible["ok"] and plain["ok"], (divisible, plain)
    assert divisible["registers"] < plain["registers"], (divisible, plain)
