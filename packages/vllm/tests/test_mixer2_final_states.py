"""vLLM 0.33's MambaMixer2 prefill call, made against the op the plugin rebinds on this platform.

In 0.33 the layer passes the state pool as ``final_states_out=ssm_state`` with
``final_state_indices=state_indices_tensor_p`` and no longer writes the final states itself
(``static_seams`` checks that call in the 0.33.0 wheel). So the routed op must scatter them:
this test makes that call, keyword for keyword, eagerly and under ``torch.compile`` (the op is
a custom op that declares ``final_states_out`` mutated), and compares the pool with the spec's
states written by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from mamba_backends import reference, select_mamba_backend
from mamba_backends.metadata import compute_chunk_metadata
from mamba_backends_vllm import _plugin

LENS = (5, 3, 11)
H, P, G, N, CHUNK, SLOTS = 2, 4, 1, 8, 8, 6
SLOT_OF_SEQ = (4, 1, 2)


def _inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    T = sum(LENS)
    qsl = torch.tensor([0, *torch.tensor(LENS).cumsum(0).tolist()], dtype=torch.int32)
    cuc, last, sidx = compute_chunk_metadata(qsl, torch.zeros(len(LENS), dtype=torch.int32), CHUNK)
    return {
        "x": randn(T, H, P),
        "dt": randn(T, H, scale=0.5),
        "A": -torch.rand(H, generator=g) - 0.5,
        "B": randn(T, G, N),
        "C": randn(T, G, N),
        "D": randn(H),
        "dt_bias": randn(H, scale=0.3),
        "cu_seqlens": qsl,
        "cu_chunk_seqlens": cuc,
        "last_chunk_indices": last,
        "seq_idx": sidx,
        "initial_states": randn(len(LENS), H, P, N, scale=0.5),
        "pool": randn(SLOTS, H, P, N),
        "slots": torch.tensor(SLOT_OF_SEQ, dtype=torch.int32),
    }


def _mixer2_033_call(op: Callable[..., Any], a: dict[str, Any], pool: torch.Tensor) -> Any:
    """The keywords of vLLM 0.33's MambaMixer2 prefill call (no prefix-caching checkpoints)."""
    out = torch.zeros_like(a["x"])
    ret = op(
        a["x"], a["dt"], a["A"], a["B"], a["C"],
        chunk_size=CHUNK, D=a["D"], z=None, dt_bias=a["dt_bias"], seq_idx=a["seq_idx"],
        cu_seqlens=a["cu_seqlens"], cu_chunk_seqlens=a["cu_chunk_seqlens"],
        last_chunk_indices=a["last_chunk_indices"], initial_states=a["initial_states"],
        return_intermediate_states=False, dt_softplus=True, dt_limit=(0.0, float("inf")),
        out=out, state_dtype=pool.dtype, final_states_out=pool, final_state_indices=a["slots"],
    )  # fmt: skip
    return ret, out


def _expected(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's states (0.32's form: returned), scattered into the pool by the test."""
    out = torch.zeros_like(a["x"], dtype=torch.float64)
    states = reference.mamba_chunk_scan_combined_varlen(
        a["x"], a["dt"], a["A"], a["B"], a["C"], CHUNK, a["cu_seqlens"], a["cu_chunk_seqlens"],
        a["last_chunk_indices"], a["seq_idx"], out, D=a["D"], dt_bias=a["dt_bias"],
        initial_states=a["initial_states"], dt_softplus=True, state_dtype=torch.float64,
    )  # fmt: skip
    pool = a["pool"].clone().double()
    for b, slot in enumerate(SLOT_OF_SEQ):
        pool[slot] = states[b]
    return pool, out


def _routed_op() -> Callable[..., Any]:
    choice = select_mamba_backend("mamba2", None)
    if choice.rule not in _plugin.SERVING_RULES:
        pytest.skip(f"mamba2 is not routed on this platform (rule {choice.rule})")
    return choice.backend.ops().mamba_chunk_scan_combined_varlen


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_routed_op_writes_the_final_states(compiled: bool) -> None:
    a = _inputs()
    want_pool, want_out = _expected(a)
    op = _routed_op()
    call = (
        torch.compile(_mixer2_033_call, backend="aot_eager", fullgraph=True)
        if compiled
        else (_mixer2_033_call)
    )
    pool = a["pool"].clone()
    ret, out = call(op, a, pool)
    assert ret is None
    torch.testing.assert_close(pool.double(), want_pool, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(out.double(), want_out, atol=2e-4, rtol=2e-4)
    untouched = [s for s in range(SLOTS) if s not in SLOT_OF_SEQ]
    assert torch.equal(pool[untouched], a["pool"][untouched])
