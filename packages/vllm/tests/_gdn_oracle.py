"""A stand-in GDN layer, hand-built step metadata and a float64 per-token oracle (no vLLM).

Shared by ``test_gdn_core.py`` (vLLM's metadata class, the CPU backend) and
``test_gdn_core_triton.py`` (the Triton backend under the Triton interpreter, in an environment
without vLLM). The oracle is written here in plain torch, independent of every backend: conv
over the whole sequence, gating, l2-normalised delta rule, token by token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

H, HV, K, V, W = 2, 4, 16, 16, 4
DIM = 2 * H * K + HV * V


def rearrange_mixed_qkv(layer: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """vLLM's split (``QwenGatedDeltaNetAttention.rearrange_mixed_qkv``, tp 1), written here:
    ``x (T, DIM)`` -> ``q, k (1, T, H, K)``, ``v (1, T, HV, V)``."""
    T = x.shape[0]
    q, k, v = torch.split(x, [layer.key_dim, layer.key_dim, layer.value_dim], dim=-1)
    return (
        q.contiguous().view(1, T, -1, layer.head_k_dim),
        k.contiguous().view(1, T, -1, layer.head_k_dim),
        v.contiguous().view(1, T, -1, layer.head_v_dim),
    )


class Layer(SimpleNamespace):
    def rearrange_mixed_qkv(self, x: torch.Tensor) -> Any:
        return rearrange_mixed_qkv(self, x)


def make_layer(
    slots: int,
    dtype: torch.dtype,
    g: torch.Generator,
    *,
    dim_first: bool = True,
    num_spec: int = 0,
    layer_cls: type = Layer,
) -> Any:
    """Weights and NaN-filled caches (garbage until written): conv ``(slots, DIM, W-1+num_spec)``
    (``(slots, W-1+num_spec, DIM)`` unless ``dim_first``), recurrent ``(slots, HV, V, K)``."""
    conv_w = 0.3 * torch.randn(DIM, 1, W, generator=g)
    n = W - 1 + num_spec
    state_len = (slots, DIM, n) if dim_first else (slots, n, DIM)
    return layer_cls(
        conv1d=SimpleNamespace(weight=conv_w.to(dtype), bias=None),
        activation="silu",
        # slow decay (~0.97 per token), so that states carried across steps matter
        A_log=torch.log(0.02 + 0.1 * torch.rand(HV, generator=g)),
        dt_bias=-1 + 0.5 * torch.randn(HV, generator=g),
        kv_cache=(
            torch.full(state_len, float("nan"), dtype=dtype),
            torch.full((slots, HV, V, K), float("nan"), dtype=dtype),
        ),
        key_dim=H * K,
        value_dim=HV * V,
        head_k_dim=K,
        head_v_dim=V,
        tp_size=1,
    )


def oracle(layer: Any, x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
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


def md_fields(n_decodes: int, prefills: list[int], slots: list[int], init: list[bool]) -> dict:
    """``GDNAttentionMetadata`` fields of a step without speculation (decodes first)."""
    lens = [1] * n_decodes + prefills
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return dict(
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


#: Every field gdn_core reads, None unless a builder sets it (for a SimpleNamespace stand-in).
MD_DEFAULTS: dict[str, Any] = dict(
    has_initial_state=None,
    spec_query_start_loc=None,
    non_spec_query_start_loc=None,
    spec_state_indices_tensor=None,
    non_spec_state_indices_tensor=None,
    spec_sequence_masks=None,
    spec_token_indx=None,
    non_spec_token_indx=None,
    num_accepted_tokens=None,
)


@dataclass
class Req:
    """One request in a step: ``spec`` rows carry ``n`` = 1 + drafts tokens, the others are
    prefills (chunks). ``slots``: its block-table row (``1 + num_spec`` state slots)."""

    name: str
    n: int
    spec: bool
    slots: list[int]
    init: bool = True
    accepted: int = 1
    extra: dict = field(default_factory=dict)


def spec_md_fields(reqs: list[Req]) -> dict:
    """``GDNAttentionMetadata`` fields of a step with speculative rows, as vLLM 0.32's builder
    sets them (``GDNAttentionMetadataBuilder.build``): non-speculative rows are prefills, tokens
    in batch order, ``spec_token_indx``/``non_spec_token_indx`` pick them out."""
    spec = [r for r in reqs if r.spec]
    non = [r for r in reqs if not r.spec]
    assert spec
    mask = torch.tensor([r.spec for r in reqs])
    lens = torch.tensor([r.n for r in reqs])

    def cu(rs: list[Req]) -> torch.Tensor:
        return torch.tensor(
            [0, *torch.tensor([r.n for r in rs]).cumsum(0).tolist()], dtype=torch.int32
        )

    f: dict[str, Any] = dict(
        num_prefills=len(non),
        num_prefill_tokens=sum(r.n for r in non),
        num_decodes=0,
        num_decode_tokens=0,
        num_spec_decodes=len(spec),
        num_spec_decode_tokens=sum(r.n for r in spec),
        num_actual_tokens=int(lens.sum()),
        spec_sequence_masks=mask,
        spec_query_start_loc=cu(spec),
        spec_state_indices_tensor=torch.tensor([r.slots for r in spec], dtype=torch.int32),
        num_accepted_tokens=torch.tensor([r.accepted for r in spec], dtype=torch.int32),
    )
    if non:
        tok_mask = torch.repeat_interleave(mask, lens)
        order = torch.argsort(tok_mask.int(), stable=True)
        n_non = f["num_prefill_tokens"]
        f.update(
            non_spec_token_indx=order[:n_non].to(torch.int32),
            spec_token_indx=order[n_non:].to(torch.int32),
            non_spec_query_start_loc=cu(non),
            non_spec_state_indices_tensor=torch.tensor(
                [r.slots[0] for r in non], dtype=torch.int32
            ),
            has_initial_state=torch.tensor([r.init for r in non]),
        )
    else:
        f.update(
            spec_token_indx=torch.arange(f["num_actual_tokens"], dtype=torch.int32),
            non_spec_token_indx=torch.empty(0, dtype=torch.int32),
        )
    return f


#: Block-table rows (1 + 2 drafts): column 0 is also the request's conv state slot.
SPEC_SLOTS = {"A": [3, 7, 8], "B": [1, 9, 10], "C": [5, 11, 2]}
NUM_SPEC = 2


def spec_scenario(
    layer: Any, core: Any, dtype: torch.dtype, g: torch.Generator, wrap_md: Any
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Four engine steps with ngram-style speculation (2 drafts), ``(label, got, ref)`` each.

    1. prefill A (6) and B (5), no speculative rows;
    2. A and B verify 1 + 2 drafts (``num_accepted_tokens`` 1, after the prefill) while C's
       prompt (7) is prefilled in between them (mixed batch: ``spec_token_indx``); then A
       accepts 2 of its 3 tokens, B 1 (both drafts rejected);
    3. speculative rows only: A (3 tokens, continuing after its 2nd token of step 2), B (3),
       C (1 token, no draft); then A accepts all 3, B 2, C 1;
    4. A (3, starting from the last column: accepted 3), B (1 + 1 draft), C (3).

    ``core(layer, md, x, b, a, out)`` is the GDN core; ``wrap_md(fields)`` builds the metadata
    object. Each output is compared with :func:`oracle` over the request's accepted history plus
    this step's tokens (a rejected draft's row never enters the history).
    """
    pool = {
        s: (torch.randn(24, DIM, generator=g), torch.randn(24, HV, generator=g),
            torch.randn(24, HV, generator=g))
        for s in SPEC_SLOTS
    }  # fmt: skip
    used = dict.fromkeys(SPEC_SLOTS, 0)
    hist: dict[str, list[int]] = {s: [] for s in SPEC_SLOTS}  # accepted pool rows
    results: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def step(label: str, reqs: list[Req], md: Any, accept: dict[str, int]) -> None:
        rows = {}
        for r in reqs:
            rows[r.name] = list(range(used[r.name], used[r.name] + r.n))
            used[r.name] += r.n
        x = torch.cat([pool[r.name][0][rows[r.name]] for r in reqs]).to(dtype)
        b = torch.cat([pool[r.name][1][rows[r.name]] for r in reqs]).to(dtype)
        a = torch.cat([pool[r.name][2][rows[r.name]] for r in reqs]).to(dtype)
        out = torch.zeros(x.shape[0], HV, V, dtype=dtype)
        core(layer, md, x, b, a, out)
        t = 0
        for r in reqs:
            seq = hist[r.name] + rows[r.name]
            ref = oracle(layer, *(pool[r.name][i][seq].to(dtype) for i in range(3)))
            results.append((f"{label}:{r.name}", out[t : t + r.n].float(), ref[-r.n :].float()))
            t += r.n
            hist[r.name] += rows[r.name][: accept.get(r.name, r.n)]

    S = SPEC_SLOTS
    r1 = [Req("A", 6, False, S["A"], init=False), Req("B", 5, False, S["B"], init=False)]
    step("1", r1, wrap_md(md_fields(0, [6, 5], [3, 1], [False, False])), {})
    r2 = [Req("A", 3, True, S["A"]), Req("C", 7, False, S["C"], init=False),
          Req("B", 3, True, S["B"])]  # fmt: skip
    step("2", r2, wrap_md(spec_md_fields(r2)), {"A": 2, "B": 1})
    r3 = [Req("A", 3, True, S["A"], accepted=2), Req("B", 3, True, S["B"]),
          Req("C", 1, True, S["C"])]  # fmt: skip
    step("3", r3, wrap_md(spec_md_fields(r3)), {"A": 3, "B": 2, "C": 1})
    r4 = [Req("A", 3, True, S["A"], accepted=3), Req("B", 2, True, S["B"], accepted=2),
          Req("C", 3, True, S["C"])]  # fmt: skip
    step("4", r4, wrap_md(spec_md_fields(r4)), {})
    return results


class IgnoreAccepted:
    """A mutant of a backend's ops: ``op`` gets ``num_accepted_tokens`` all ones (the next step
    then starts from the first position's state/window whatever was accepted)."""

    def __init__(self, ops: Any, op: str) -> None:
        self._ops, self._op = ops, op

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._ops, name)
        if name != self._op:
            return fn

        def mutated(*args: Any, **kw: Any) -> Any:
            if kw.get("num_accepted_tokens") is not None:
                kw["num_accepted_tokens"] = torch.ones_like(kw["num_accepted_tokens"])
            return fn(*args, **kw)

        return mutated
