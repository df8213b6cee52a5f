"""The GDN layer's core (``mamba_backends_vllm.gdn.gdn_core``) against a per-token oracle.

No engine: a stand-in layer carries vLLM's caches and weights, and ``GDNAttentionMetadata`` is
built by hand (``_gdn_oracle``). Without speculation, two engine steps with chunked prefill:
step 1 prefills the first part of sequences A and B; step 2 decodes A (one token), continues B
(``has_initial_state``) and starts C. With speculation (2 drafts, the widened conv state, one
recurrent slot per position), four steps where drafts are verified, some accepted, and the next
step continues from the accepted position (``_gdn_oracle.spec_scenario``); a mutant that ignores
``num_accepted_tokens`` in the conv or in the recurrence must fail. Every output token is
compared with an independent recurrence over the request's accepted tokens (conv, gating,
l2-normalised delta rule), written in plain torch. The non-CPU plumbing (vLLM's
``qwen_gdn_attention_core`` -> the OOT layer's ``_forward_core`` -> ``gdn_core``) is run here on
CPU with the CPU backend's ops.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("vllm")

import _gdn_oracle
from _gdn_oracle import DIM, HV, NUM_SPEC, IgnoreAccepted, V, make_layer, md_fields, oracle
from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import (
    QwenGatedDeltaNetAttention,
)
from vllm.model_executor.layers.mamba.mamba_utils import is_conv_state_dim_first
from vllm.v1.attention.backends.gdn_attn import GDNAttentionMetadata

from mamba_backends import get_mamba_backend
from mamba_backends_vllm import _plugin, gdn


class _Layer(_gdn_oracle.Layer):
    def rearrange_mixed_qkv(self, x: torch.Tensor) -> Any:  # vLLM's own split
        return QwenGatedDeltaNetAttention.rearrange_mixed_qkv(self, x)


def _layer(slots: int, dtype: torch.dtype, g: torch.Generator, num_spec: int = 0) -> _Layer:
    return make_layer(
        slots, dtype, g, dim_first=is_conv_state_dim_first(), num_spec=num_spec, layer_cls=_Layer
    )


def _md(n_decodes: int, prefills: list[int], slots: list[int], init: list[bool]) -> Any:
    return GDNAttentionMetadata(**md_fields(n_decodes, prefills, slots, init))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gdn_core_two_steps_match_the_oracle(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_plugin, "ops_for", lambda t: get_mamba_backend(t).ops())
    g = torch.Generator().manual_seed(0)
    layer = _layer(slots=6, dtype=dtype, g=g)
    n_a, n_b, n_c = 5, 70, 9  # A: 4 + 1 decode; B: 40 + 30 (crosses a 64 chunk); C: 9
    seq = {
        s: (torch.randn(n, DIM, generator=g), torch.randn(n, HV, generator=g),
            torch.randn(n, HV, generator=g))
        for s, n in (("A", n_a), ("B", n_b), ("C", n_c))
    }  # fmt: skip
    slot = {"A": 3, "B": 1, "C": 5}
    got: dict[str, list[torch.Tensor]] = {s: [] for s in seq}

    def step(parts: list[tuple[str, int, int]], md: Any) -> None:
        x = torch.cat([seq[s][0][i:j] for s, i, j in parts]).to(dtype)
        b = torch.cat([seq[s][1][i:j] for s, i, j in parts]).to(dtype)
        a = torch.cat([seq[s][2][i:j] for s, i, j in parts]).to(dtype)
        out = torch.zeros(x.shape[0], HV, V, dtype=dtype)
        gdn.gdn_core(layer, md, x, b, a, out)
        t = 0
        for s, i, j in parts:
            got[s].append(out[t : t + j - i].float())
            t += j - i

    step([("A", 0, 4), ("B", 0, 40)], _md(0, [4, 40], [slot["A"], slot["B"]], [False, False]))
    step(
        [("A", 4, 5), ("B", 40, 70), ("C", 0, 9)],
        _md(1, [30, 9], [slot["A"], slot["B"], slot["C"]], [True, True, False]),
    )
    tol = 2e-4 if dtype == torch.float32 else 6e-2
    for s, (x, b, a) in seq.items():
        ref = oracle(layer, x.to(dtype), b.to(dtype), a.to(dtype)).float()
        torch.testing.assert_close(torch.cat(got[s]), ref, atol=tol, rtol=tol, msg=s)


TOL = {torch.float32: 2e-4, torch.bfloat16: 6e-2}


def _spec_run(dtype: torch.dtype, ops: Any) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    layer = _layer(slots=12, dtype=dtype, g=g, num_spec=NUM_SPEC)

    def core(*args: Any) -> None:
        gdn.gdn_core(*args)

    return _gdn_oracle.spec_scenario(layer, core, dtype, g, lambda f: GDNAttentionMetadata(**f))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gdn_core_speculative_steps_match_the_oracle(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = get_mamba_backend("gdn").ops()
    monkeypatch.setattr(_plugin, "ops_for", lambda t: ops)
    for label, got, ref in _spec_run(dtype, ops):
        torch.testing.assert_close(got, ref, atol=TOL[dtype], rtol=TOL[dtype], msg=label)


@pytest.mark.parametrize("op", ["causal_conv1d_update", "fused_recurrent_gated_delta_rule"])
def test_gdn_core_speculative_mutant_fails(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting every speculative row from its first position (conv window or recurrent state)
    whatever the previous step accepted must be caught by the oracle."""
    mutant = IgnoreAccepted(get_mamba_backend("gdn").ops(), op)
    monkeypatch.setattr(_plugin, "ops_for", lambda t: mutant)
    tol = TOL[torch.float32]
    bad = [
        label
        for label, got, ref in _spec_run(torch.float32, mutant)
        if not torch.allclose(got, ref, atol=tol, rtol=tol)
    ]
    # A accepted 2 then 3 tokens, B 2 before step 4: those rows must be off; step 1-2 rows not.
    assert {"3:A", "4:A", "4:B"} <= set(bad), bad
    assert not any(label.startswith(("1:", "2:")) for label in bad), bad


def test_non_cpu_route_reaches_gdn_core_through_vllms_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA/ROCm/XPU plumbing, run on CPU with the CPU backend's ops: vLLM's own
    ``qwen_gdn_attention_core`` (the function behind its splitting op) resolves the layer and
    calls ``_forward_core``, which the OOT layer overrides to run ``gdn_core``; speculative steps
    included. (The Triton ops themselves: ``test_gdn_core_triton.py``; no GPU ran this.)"""
    from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as qgla
    from vllm.utils.torch_utils import _encode_layer_name

    ops = get_mamba_backend("gdn").ops()
    monkeypatch.setattr(_plugin, "ops_for", lambda t: ops)
    routed = gdn.RoutedQwenGatedDeltaNetAttention
    for name in ("forward_cuda", "forward_hip", "forward_xpu", "forward_cpu", "_forward_core"):
        assert name in vars(routed), name

    class _Routed(_Layer):
        _forward_core = routed._forward_core
        _mb_routed = True
        prefix = "model.layers.0.linear_attn"

    g = torch.Generator().manual_seed(1)
    layer = _layer(slots=12, dtype=torch.float32, g=g, num_spec=NUM_SPEC)
    layer = _Routed(**vars(layer))
    ctx = SimpleNamespace(no_compile_layers={layer.prefix: layer}, attn_metadata=None)
    monkeypatch.setattr(qgla, "get_forward_context", lambda: ctx)
    monkeypatch.setattr(gdn, "get_forward_context", lambda: ctx)

    def core(lay: Any, md: Any, x: Any, b: Any, a: Any, out: Any) -> None:
        ctx.attn_metadata = {lay.prefix: md}
        qgla.qwen_gdn_attention_core(x, b, a, out, layer_name=_encode_layer_name(lay.prefix))

    results = _gdn_oracle.spec_scenario(
        layer, core, torch.float32, g, lambda f: GDNAttentionMetadata(**f)
    )
    for label, got, ref in results:
        torch.testing.assert_close(got, ref, atol=TOL[torch.float32], rtol=2e-4, msg=label)
