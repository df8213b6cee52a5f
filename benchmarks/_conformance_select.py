"""A pytest plugin for ``benchmarks/gpu.py``: keep only the conformance cases of chosen dtypes.

``GPU_CONFORMANCE_DTYPES=bf16/fp32,fp16/fp32,...`` (activation/state, as in the kit's case ids
``...:oneshot[bf16/fp32,...]``) deselects the fixed cases of every other pair; tests whose id
names no dtype pair (the drawn tests, the per-backend checks) are kept. Unset: keeps all.
"""

from __future__ import annotations

import os
import re
from typing import Any

_PAIR = re.compile(r"\[(\w+)/(\w+),")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    want = os.environ.get("GPU_CONFORMANCE_DTYPES", "")
    if not want:
        return
    pairs = set(want.split(","))
    keep: list[Any] = []
    drop: list[Any] = []
    for item in items:
        m = _PAIR.search(item.nodeid)
        (keep if m is None or f"{m[1]}/{m[2]}" in pairs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
