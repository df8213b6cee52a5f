"""The conformance kit on Triton backends under the interpreter with a vendor's tuning tables.

On a machine without the vendor's GPU, ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors,
and :data:`~mamba_backends_triton._launch.TUNING_DEVICE_ENV` makes their launchers look the
tuning tables up under a device name such as ``hip:gfx942``: every block size, warp count and
stage count of that architecture's tables is then launched and held to the spec. (The compile
check proves the same configs compile for the real target; this proves they compute right.)
"""

from __future__ import annotations

from typing import Any

import pytest

from mamba_backends.testing import conformance_tests
from mamba_backends_triton._launch import TUNING_DEVICE_ENV


def tuned_conformance_tests(backends: Any, tuning_device: str, *, quick: bool = True) -> type:
    """A pytest test class: the kit (its quick fixed subset by default, no drawn cases) on
    ``backends`` on CPU tensors, with every launch configured from ``tuning_device``'s tables.
    Meant for ``TRITON_INTERPRET=1``; bind the result to a ``Test*`` name."""
    base: Any = conformance_tests(backends, device="cpu", quick=quick, drawn=False)

    class TunedConformance(base):
        @pytest.fixture(autouse=True)
        def _tuning_device(self, monkeypatch: pytest.MonkeyPatch) -> None:
            monkeypatch.setenv(TUNING_DEVICE_ENV, tuning_device)

    TunedConformance.__doc__ = f"The kit with the {tuning_device} tuning tables (interpreter)."
    return TunedConformance


#: Shape keys each Triton op's launcher looks its tuning up with (a real model layer's), for
#: the vendor packages' table tests.
LOOKUP_KEYS: dict[str, dict[str, int]] = {
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

#: A 1-D block of channels/elements and the warps that share it.
PER_LANE_BLOCKS = (
    ("BLOCK_D", "num_warps"),
    ("TILE", "num_warps"),
    ("EDGE_BLOCK_D", "edge_num_warps"),
    ("SNAP_BLOCK", "snap_num_warps"),
)


def tuning_tables(package: str) -> dict[str, dict[str, Any]]:
    """The JSON tuning tables a package ships, by op."""
    import json
    from importlib import resources

    folder = resources.files(package)
    return {
        f.name.removesuffix(".json"): json.loads(f.read_text())
        for f in folder.iterdir()
        if f.name.endswith(".json")
    }


def check_kernels_map_every_entry(tables: dict[str, dict[str, Any]]) -> None:
    """Every kernel of the compile check maps every entry of ``tables`` to int blocks, 1-16
    warps and exactly the entry's vendor launch options (each valid for the entry's device,
    :func:`~mamba_backends_triton._options.check_config`), and every op of ``tables`` has a
    kernel there."""
    import importlib

    from mamba_backends_triton._options import VENDOR_KEYS, check_config
    from mamba_backends_triton.compile_check import KERNEL_MODULES

    checked = set()
    for name in KERNEL_MODULES:
        for check in importlib.import_module(name).COMPILE_CHECKS:
            for e in tables[check.op]["configs"]:
                check_config(check.op, e["device"], e["config"])
                vendor = {k: v for k, v in e["config"].items() if k in VENDOR_KEYS}
                for variant in check.variants:
                    blocks, options = check.launch(e["config"], variant.constexprs)
                    assert 1 <= options["num_warps"] <= 16, (check.op, e["device"])
                    assert all(isinstance(v, int) for v in blocks.values()), (check.op, blocks)
                    got = {k: v for k, v in options.items() if k in VENDOR_KEYS}
                    assert got == vendor, (check.kernel.__name__, e["device"], got, vendor)
            checked.add(check.op)
    assert checked == set(tables), sorted(set(tables) ^ checked)
