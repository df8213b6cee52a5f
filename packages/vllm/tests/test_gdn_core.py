"""The GDN layer's core (``mamba_backends_vllm.gdn.gdn_core``) against a per-token oracle.

No engine: a stand-in layer carries vLLM's caches and weights, and ``GDNAttentionMetadata`` is
built by hand for two engine steps with chunked prefill: step 1 prefills the first part of
sequences A and B; step 2 decodes A (one token), continues B (``has_initial_state``) and
starts C. Every output token is compared with an independent recurrence over the whole
sequence (conv, gating, l2-normalised delta rule), written here in plain torch.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("vllm")

from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import (
    QwenGatedDeltaNetAttention,
)
from vllm.model_executor.layers.mamba.mamba_utils import is_conv_state_dim_first
from vllm.v1.attention.backends.gdn_attn import GDNAttentionMetadata

from mamba_backends import get_mamba_backend
from mamba_backends_vllm import _plugin, gdn

H, HV, K, V, W = 2, 4, 16, 16, 4
DIM = 2 * H * K + HV * V


class _Layer(SimpleNamespace):
    def rearrange_mixed_qkv(self, x: torch.Tensor) -> Any:
        return QwenGatedDeltaNetAttention.rearrange_mixed_qkv(self, x)


def _layer(slots: int, dtype: torch.dtype, g: torch.Generator) -> _Layer:
    conv_w = 0.3 * torch.randn(DIM, 1, W, generator=g)
    state_len = (slots, DIM, W - 1) if is_conv_state_dim_first() else (slots, W - 1, DIM)
    return _Layer(
        conv1d=SimpleNamespace(weight=conv_w.to(dtype), bias=None),
        activation="silu",
        # slow decay (~0.97 per token), so that states carried across steps matter
        A_log=torch.log(0.02 + 0.1 * torch.rand(HV, generator=g)),
        dt_bias=-1 + 0.5 * torch.randn(HV, generator=g),
        kv_cache=(
            torch.full(state_len, float("nan"), dtype=dtype),  # garbage until written
            torch.full((slots, HV, V, K), float("nan"), dtype=dtype),
        ),
        key_dim=H * K,
        value_dim=HV * V,
        head_k_dim=K,
        head_v_dim=V,
        tp_size=1,
    )


def _oracle(layer: _Layer, x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """One whole sequence, token by token, float64: ``x (T, DIM)`` -> ``o (T, HV, V)``."""
    x, b, a = x.double(), b.double(), a.double()
    w = layer.conv1d.weight.double()[:, 0, :]  # (DIM, W)
    T = x.shape[0]
    xp = torch.cat([torch.zeros(W - 1, DIM, dtype=torch.float64), x])
    y = F.silu(torch.stack([(xp[t : t + W].T * w).sum(-1) for t in range(T)]))
    q = y[:, : H * K].reshape(T, H, K).repeat_interleave(HV // H, 1)
    k = y[:, H * K : 2 * H * K].reshape(T, H, K).repeat_interleave(HV // H, 1)
    v = y[:, 2 * H * K :].reshape(T, HV, V)
    q, k = F.normalize(q, dim=-1) * K**-0.5, F.normalize(k, dim=-1)
    decay = torch.exp(-torch.exp(layer.A_log.double()) * F.softplus(a + layer.dt_bias.double()))
    beta = torch.sigmoid(b)
    S = torch.zeros(HV, V, K, dtype=torch.float64)
    out = []
    for t in range(T):
        S = S * decay[t, :, None, None]
        u = beta[t, :, None] * (v[t] - torch.einsum("hvk,hk->hv", S, k[t]))
        S = S + u[:, :, None] * k[t][:, None, :]
        out.append(torch.einsum("hvk,hk->hv", S, q[t]))
    return torch.stack(out)


def _md(n_decodes: int, prefills: list[int], slots: list[int], init: list[bool]) -> Any:
    lens = [1] * n_decodes + prefills
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return GDNAttentionMetadata(
        num_prefills=len(prefills),
        num_prefill_tokens=sum(prefills),
        num_decodes=n_decodes,
        num_decode_tokens=n_decodes,
        num_spec_decodes=0,
        num_spec_decode_tokens=0,
        num_actual_tokens=sum(lens),
        has_initial_state=torch.tensor(init),
        non_spec_query_start_loc=qsl,
        non_spec_state_indices_tensor=torch.tensor(slots, dtype=torch.int32),
    )


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
        ref = _oracle(layer, x.to(dtype), b.to(dtype), a.to(dtype)).float()
        torch.testing.assert_close(torch.cat(got[s]), ref, atol=tol, rtol=tol, msg=s)
