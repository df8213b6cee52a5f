"""``benchmarks/gpu.py --dry-run``: the GPU script end to end under Triton's interpreter.

Tiny shapes on CPU, two bench rows and the conformance kit's signature checks: proves the
plumbing (children, time caps, partial files, targets, tables), not any number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="dry run is for the CPU")
def test_gpu_script_dry_run(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(tmp_path)]
    cmd += ["--ops", "causal_conv1d_update", "linear_decode_forward", "--repeats", "1"]
    cmd += ["--conformance-k", "signature and linear_attention", "--carry", str(tmp_path / "none")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    conf = data["conformance"]
    assert conf["rc"] == 0 and conf["counts"].get("passed", 0) >= 1 and not conf["failed"]
    rows = data["bench"]["rows"]
    assert {r["op"] for r in rows} == {"causal_conv1d_update", "linear_decode_forward"}
    assert all(r["ours_status"] == "ok" and r["copy_gbps"] for r in rows)
    by_name = {t["target"]: t for t in data["targets"]}
    assert by_name["linear decode"]["status"] in ("pass", "miss")
    assert by_name["GDN chunk"]["status"] == "n/a"  # not run: says so, does not raise
    md = (tmp_path / "gpu.md").read_text()
    assert "## Targets (issues 9, 10)" in md and "linear_decode_forward" in md
    assert "| 10 | linear decode |" in r.stdout
