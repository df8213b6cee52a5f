"""The kernel adapters (``seams.KernelAdapter``): vLLM's call binds them, the plugin plans them,
and the prefix-caching checkpoint store writes what vLLM's Triton kernel writes."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest
import torch

pytest.importorskip("vllm")

from mamba_backends_vllm import _plugin, adapters, seams, versions

_M2 = "vllm.model_executor.layers.mamba.mamba_mixer2"


def _installed() -> str:
    import vllm

    return str(vllm.__version__)


def _adapters() -> list[tuple[seams.KernelRoute, seams.KernelAdapter]]:
    return [
        (r, a)
        for r in seams.active_routes()
        for a in r.adapters
        if versions.version_in(a.versions, _installed())
    ]


def _factory(a: seams.KernelAdapter):
    module, _, name = a.adapter.partition(":")
    return getattr(importlib.import_module(module), name)


def test_mamba2_has_the_checkpoint_adapter() -> None:
    assert any(a.symbol == "store_prefill_checkpoint" for _, a in _adapters())


@pytest.mark.parametrize(("route", "adapter"), _adapters(), ids=lambda x: getattr(x, "symbol", ""))
def test_adapter_binds_every_call_site_and_takes_vllms_parameters(
    route: seams.KernelRoute, adapter: seams.KernelAdapter
) -> None:
    mod = importlib.import_module(route.layer_module)
    fn = _factory(adapter)(lambda *a, **k: None)
    sig = inspect.signature(fn)
    theirs = inspect.signature(getattr(mod, adapter.symbol))
    assert list(sig.parameters) == list(theirs.parameters), "adapter signature != vLLM's"
    calls = [
        n
        for n in ast.walk(ast.parse(inspect.getsource(mod)))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == adapter.symbol
    ]
    assert calls, f"{route.layer_module} no longer calls {adapter.symbol}"
    for call in calls:
        sig.bind(*([None] * len(call.args)), **{k.arg: None for k in call.keywords if k.arg})


def test_plan_routes_the_adapter_on_cpu() -> None:
    _, decisions = _plugin.plan()
    d = decisions["mamba2"]
    assert d.status == "routed", d.reason
    assert (
        d.kernels["store_prefill_checkpoint"] == f"{d.backend}.store_prefill_checkpoint (adapter)"
    )
    assert d.adapted["store_prefill_checkpoint"][0] == "store_prefill_checkpoint"


def _expected(checkpoint, chunk_idx, x, conv_state, chunk_states, ssm_state, qsl, state_len):
    """What vLLM's Triton kernel writes, row by row (its docstring and kernel body)."""
    for row, off in enumerate(checkpoint.checkpoint_offsets.tolist()):
        if off <= 0:
            continue
        dst = int(checkpoint.state_indices[row])
        start = int(qsl[row]) + off - state_len
        conv_state[dst, :, :state_len] = x[:, start : start + state_len]
        ssm_state[dst] = chunk_states[int(chunk_idx[row])]


def test_checkpoint_adapter_writes_what_vllms_kernel_writes() -> None:
    from vllm.model_executor.layers.mamba.checkpoint import MambaPrefillCheckpointMetadata

    from mamba_backends import get_mamba_backend

    g = torch.Generator().manual_seed(0)
    dim, W, H, P, N, blocks = 6, 4, 2, 3, 4, 7
    lens = [20, 5, 33]
    qsl = torch.tensor([0, 20, 25, 58], dtype=torch.int32)
    x = torch.randn(58, dim + 2, generator=g)[:, 1 : 1 + dim].t()  # (dim, T), as the layer's
    chunk_states = torch.randn(6, H, P, N, generator=g)
    # vLLM's SD layout: (blocks, W-1 + spec, dim) storage, handed out as (blocks, dim, W-1 + spec).
    conv = torch.randn(blocks, W - 1 + 1, dim, generator=g).transpose(1, 2)
    ssm = torch.randn(blocks, H, P, N, generator=g)
    ckpt = MambaPrefillCheckpointMetadata(
        checkpoint_offsets=torch.tensor([16, 0, 32], dtype=torch.int32),
        state_indices=torch.tensor([3, 0, 5], dtype=torch.int64),  # NULL_BLOCK_ID where none
    )
    chunk_idx = torch.tensor([1, 0, 4], dtype=torch.int32)
    assert sum(lens) == int(qsl[-1])
    want_conv, want_ssm = conv.clone(), ssm.clone()
    _expected(ckpt, chunk_idx, x, want_conv, chunk_states, want_ssm, qsl, W - 1)
    fn = adapters.store_prefill_checkpoint(
        get_mamba_backend("mamba2").ops().store_prefill_checkpoint
    )
    fn(ckpt, chunk_idx, x, conv, chunk_states, ssm, qsl, state_len=W - 1)
    assert torch.equal(conv, want_conv)
    assert torch.equal(ssm, want_ssm)
    assert not torch.equal(ssm[3], torch.zeros_like(ssm[3]))


def test_a_backend_without_the_op_keeps_vllms_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapted op is optional (``OPTIONAL_OPS``): a backend without it stays routed and
    vLLM's own kernel stays in the layer module (it runs where vLLM's Triton runs)."""
    import mamba_backends_cpu.ops as cpu_ops
    from mamba_backends import OPTIONAL_OPS, get_mamba_backend

    assert "store_prefill_checkpoint" in OPTIONAL_OPS
    monkeypatch.delattr(cpu_ops, "store_prefill_checkpoint")
    assert not get_mamba_backend("mamba2").ops().implements("store_prefill_checkpoint")
    _, decisions = _plugin.plan()
    d = decisions["mamba2"]
    assert d.status == "routed", d.reason
    assert "store_prefill_checkpoint" not in d.adapted
    assert d.kernels["store_prefill_checkpoint"].startswith("vLLM native")
