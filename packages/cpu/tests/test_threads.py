"""Thread use of the native kernels: the team is ``torch.get_num_threads()`` of torch's libgomp.

Each check runs in a fresh subprocess (its own OpenMP state): it pins itself with
``os.sched_setaffinity``, sets torch's thread count, then calls ``causal_conv1d_fn`` (the
library loads and runs its first kernel there) while ``_build.call`` records the ``nthreads``
field of every argument block, and it lists its threads (``/proc/self/task``) before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_backends_cpu.native import _build

pytestmark = [
    pytest.mark.skipif(_build.compiler() is None, reason="no C compiler here"),
    pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc"),
]

_CHILD = r"""
import json, os, sys
from pathlib import Path

cores, nthreads = json.loads(sys.argv[1])
os.sched_setaffinity(0, cores)
import torch

torch.set_num_threads(nthreads)
from mamba_backends_cpu import ops
from mamba_backends_cpu.native import _build


def threads():
    out = {}
    for t in Path("/proc/self/task").iterdir():
        for line in (t / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[t.name] = line.split(":", 1)[1].strip()
    return out


given = []
real = _build.call


def counting(fn, args, allow=()):
    given.append(int(args.nthreads))
    return real(fn, args, allow)


_build.call = counting
dim, T, W = 64, 40, 4
x = torch.randn(T, dim).t()
weight, states = torch.randn(dim, W), torch.zeros(1, dim, W - 1)
qsl = torch.tensor([0, T], dtype=torch.int32)
start = threads()
# torch's own pool: one parallel region of torch's sized to torch.get_num_threads().
torch.randn(1 << 22).add_(1)
pool = threads()
ops.causal_conv1d_fn(x, weight, None, states, qsl, torch.tensor([0], dtype=torch.int32),
                     torch.tensor([False]))
after = threads()
print(json.dumps({"given": given, "start": start, "pool": pool, "after": after,
                  "torch_threads": torch.get_num_threads()}))
"""


def _run(cores: list[int], nthreads: int) -> dict:
    env = dict(os.environ, MAMBA_BACKENDS_CPU_NATIVE="1")
    for k in ("OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND", "GOMP_CPU_AFFINITY"):
        env.pop(k, None)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([cores, nthreads])],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_core_one_thread() -> None:
    """Bound to one core with torch at 1 thread: every kernel gets ``nthreads == 1``, loading
    the library and running it creates no thread, and every thread stays on that core."""
    core = min(os.sched_getaffinity(0))
    r = _run([core], 1)
    assert r["torch_threads"] == 1
    assert r["given"] and set(r["given"]) == {1}, r["given"]
    assert r["pool"] == r["start"], "a 1-thread torch op created threads"
    assert set(r["after"]) == set(r["start"]), (r["start"], r["after"])
    assert set(r["after"].values()) == {str(core)}, r["after"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_two_threads_use_torchs_pool() -> None:
    """torch at 2 threads: every kernel gets ``nthreads == 2`` and runs on torch's pool (the
    worker torch's parallel region created); no thread is added (a second OpenMP runtime, or a
    team larger than torch's, would start its own)."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    r = _run(cores, 2)
    assert r["torch_threads"] == 2
    assert r["given"] and set(r["given"]) == {2}, r["given"]
    assert len(r["pool"]) == len(r["start"]) + 1, "torch's 2-thread op started one worker"
    assert set(r["after"]) == set(r["pool"]), (r["pool"], r["after"])
