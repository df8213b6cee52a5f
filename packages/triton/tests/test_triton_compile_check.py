"""The compile check catches what it claims to: a spilling config fails, a sane one passes.

The check needs real (not interpreted) kernels, so it runs in a fresh process with
``TRITON_INTERPRET=0``; each compile takes about a second on this CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = """
import json, sys
from mamba_backends_triton import compile_check as cc
cc._prepare_env()
mod = "mamba_backends_triton.ops.conv1d.update"
rows = [cc.compile_one((mod, 0, 0, "test", cfg, target)) for cfg, target in json.loads(sys.argv[1])]
print(json.dumps([r.__dict__ for r in rows]))
"""


def _compile(jobs, script=SCRIPT):
    """Run ``script`` on ``jobs`` in a fresh process (no interpreter); its last stdout line."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run(
        [sys.executable, "-c", script, json.dumps(jobs)],
        capture_output=True, text=True, env=env, check=False, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_spills_fail_and_sane_configs_pass_on_both_vendors():
    sane = {"BLOCK_D": 256, "num_warps": 4, "num_stages": 1}
    # 2048 channels on one warp: 64 per thread in each of ~10 live vectors, past the registers.
    spilling = {"BLOCK_D": 2048, "num_warps": 1, "num_stages": 1}
    jobs = [
        (sane, "cuda:sm90"),
        (spilling, "cuda:sm90"),
        (sane, "hip:gfx942"),
        (spilling, "hip:gfx942"),
    ]
    ok_nv, bad_nv, ok_amd, bad_amd = _compile(jobs)
    for row in (ok_nv, ok_amd):
        assert row["ok"], row
        assert row["registers"] > 0 and row["spill_bytes"] == 0
    for row in (bad_nv, bad_amd):
        assert not row["ok"] and "spills" in row["error"], row


def test_known_failures_are_reported_and_an_unexpected_pass_fails() -> None:
    from mamba_backends_triton.compile_check import Row

    def row(ok: bool, known: str) -> Row:
        return Row(
            "k", "v", "hip:gfx942", "default", "{}", ok=ok, error="spills 9", known_failure=known
        )

    assert row(ok=True, known="").counts_as_failure is False
    assert row(ok=False, known="").counts_as_failure is True
    xfail = row(ok=False, known="SGPR spills")
    assert xfail.counts_as_failure is False and xfail.verdict.startswith("XFAIL")
    xpass = row(ok=True, known="SGPR spills")
    assert xpass.counts_as_failure is True and xpass.verdict.startswith("XPASS")


SPY = """
import json, sys
import triton
from mamba_backends_triton import compile_check as cc
cc._prepare_env()
seen = []
real = triton.compile
def spy(src, target=None, options=None):
    kernel = real(src, target=target, options=options)
    seen.append({"options": options, "waves_per_eu": kernel.metadata.waves_per_eu,
                 "llir_attr": '"amdgpu-waves-per-eu"="2,2"' in kernel.asm["llir"]})
    return kernel
triton.compile = spy
mod = "mamba_backends_triton.ops.conv1d.update"
jobs = json.loads(sys.argv[1])
rows = [cc.compile_one((mod, 0, 0, dev, cfg, target)) for dev, cfg, target in jobs]
print(json.dumps({"rows": [r.__dict__ for r in rows], "seen": seen}))
"""


def test_a_hip_entry_is_compiled_with_its_amd_options():
    """``waves_per_eu`` of a ``hip:`` entry reaches ``triton.compile`` and the kernel (LLVM's
    ``amdgpu-waves-per-eu`` attribute); in a vendor-neutral entry it is a failing row."""
    sane = {"BLOCK_D": 256, "num_warps": 4, "num_stages": 1}
    jobs = [
        ("hip:gfx942", {**sane, "waves_per_eu": 2}, "hip:gfx942"),
        ("default", {**sane, "waves_per_eu": 2}, "cuda:sm90"),  # misplaced: never compiled
        ("hip:gfx942", {**sane, "waves_per_eu": 9}, "hip:gfx942"),  # not an allowed value
    ]
    out = _compile(jobs, SPY)
    ok, misplaced, bad = out["rows"]
    assert ok["ok"], ok
    assert "waves_per_eu=2" in ok["config"]  # shown in the printed row
    (seen,) = out["seen"]  # only the valid row reached the compiler
    assert seen["options"]["waves_per_eu"] == 2 and seen["waves_per_eu"] == 2
    assert seen["llir_attr"], seen
    assert not misplaced["ok"] and "TuningError" in misplaced["error"], misplaced
    assert "'waves_per_eu' is an AMD (hip:) option" in misplaced["error"], misplaced
    assert not bad["ok"] and "'waves_per_eu' = 9 is not one of" in bad["error"], bad
