"""Device names for the tuning lookup, and the shipped tables against the kernels' mappings."""

from __future__ import annotations

import pytest
import torch

from mamba_backends.tuning import configs, lookup
from mamba_backends_triton import _launch
from mamba_backends_triton.compile_check import TARGETS, targets_for
from mamba_backends_triton.ops.conv1d import fn, update


@pytest.fixture
def gpu(monkeypatch):
    """A fake accelerator: no interpreter, cached names forgotten before and after."""
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    _launch._accelerator_name.cache_clear()
    yield monkeypatch
    _launch._accelerator_name.cache_clear()


def test_nvidia_names_come_from_the_compute_capability(gpu):
    gpu.setattr(torch.version, "hip", None)
    gpu.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
    assert _launch.device_name(torch.device("cuda", 0)) == "cuda:sm90"
    _launch._accelerator_name.cache_clear()
    gpu.setattr(torch.cuda, "get_device_capability", lambda i=None: (10, 0))
    assert _launch.device_name(torch.device("cuda", 1)) == "cuda:sm100"


def test_amd_names_come_from_the_gcn_arch(gpu):
    class Props:
        gcnArchName = "gfx942:sramecc+:xnack-"

    gpu.setattr(torch.version, "hip", "6.3")
    gpu.setattr(torch.cuda, "get_device_properties", lambda i=None: Props())
    assert _launch.device_name(torch.device("cuda", 0)) == "hip:gfx942"


def test_cpu_and_interpreter_use_the_default_table(monkeypatch):
    assert _launch.device_name(torch.device("cpu")) == "default"
    monkeypatch.setattr(_launch, "interpreting", lambda: True)
    assert _launch.device_name(torch.device("cuda", 0)) == "default"


@pytest.mark.parametrize("device", [t.name for t in TARGETS] + ["cuda:sm86", "xpu:default"])
def test_every_device_finds_configs_the_kernels_can_use(device):
    for W in (2, 4):
        feats = {"W": W}
        cfg = lookup(fn.OP, device, dim=5376, width=W)
        for launch in (fn._fwd_launch, fn._edge_launch):
            blocks, options = launch(cfg, feats)
            assert options["num_warps"] in (1, 2, 4, 8, 16)
            assert all(v & (v - 1) == 0 for v in blocks.values()), blocks  # powers of two
        cfg = lookup(update.OP, device, dim=5376, width=W)
        blocks, options = update._launch(cfg, feats)
        assert set(blocks) == {"BLOCK_D"} and blocks["BLOCK_D"] >= 32 * options["num_warps"]


def test_cuda_tables_cover_the_archs_and_serve_only_nvidia_targets():
    for op in (fn.OP, update.OP):
        devices = {d for d, _ in configs(op, "cuda:")}
        assert {"cuda:sm80", "cuda:sm90", "cuda:sm100", "cuda:default"} <= devices
    assert [t.name for t in targets_for("cuda:default")] == ["cuda:sm80", "cuda:sm90", "cuda:sm100"]
    assert [t.name for t in targets_for("cuda:sm90")] == ["cuda:sm90"]
    assert [t.name for t in targets_for("hip:gfx950")] == ["hip:gfx950"]
    assert len(targets_for("default")) == len(TARGETS)
