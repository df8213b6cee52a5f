"""Stand-ins for the two aiter functions the adapters call, written from aiter's docstrings
(its layouts, not the contract's): a correct one of each, and broken ones the probe must
reject. Token loops in float32; tests only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def conv_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor, out: Tensor,
                use_silu: bool, cache_seqlens: Tensor, conv_state_indices: Tensor,
                pad_slot_id: int) -> None:  # fmt: skip
    """aiter's documented non-circular mode: x, out ``[B, dim, S]``; the whole ``state_len``
    window shifts by S; a request whose slot is ``pad_slot_id`` is skipped (out untouched)."""
    assert cache_seqlens.numel() == 0
    B, dim, S = x.shape
    W, L = weight.shape[1], conv_state.shape[-1]
    for b in range(B):
        s = int(conv_state_indices[b]) if conv_state_indices.numel() else b
        if s == pad_slot_id:
            continue
        window = torch.cat([conv_state[s], x[b]], dim=-1)  # [dim, L + S]
        for t in range(S):
            y = (window[:, L + t + 1 - W : L + t + 1] * weight).sum(-1)
            if bias.numel():
                y = y + bias
            out[b, :, t] = F.silu(y) if use_silu else y
        conv_state[s].copy_(window[:, -L:])


def conv_update_ignoring_bias(x, conv_state, weight, bias, out, *args):  # type: ignore[no-untyped-def]
    conv_update(x, conv_state, weight, bias[:0], out, *args)


def conv_update_that_raises(*args):  # type: ignore[no-untyped-def]
    raise RuntimeError("hipErrorNoBinaryForGpu: no kernel image for this device")


def chunk(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None = None,
          initial_state: Tensor | None = None, output_final_state: bool = False,
          use_qk_l2norm_in_kernel: bool = False,
          cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """fla's layout as aiter documents it: q, k ``[B, T, H, K]``, v ``[B, T, H, V]`` (no GVA),
    states ``[N, H, K, V]``; packed sequences need B == 1."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    assert v.shape[2] == H, "aiter's chunk kernel takes one q/k head per value head"
    sc = K**-0.5 if scale is None else scale
    cu = [0, T] if cu_seqlens is None else [int(c) for c in cu_seqlens]
    N = len(cu) - 1
    o = torch.zeros(B, T, H, V)
    final = torch.zeros(N, H, K, V)
    for n in range(N):
        S = initial_state[n].float().clone() if initial_state is not None else torch.zeros(H, K, V)
        for t in range(cu[n], cu[n + 1]):
            qt, kt = q[0, t].float(), k[0, t].float()
            if use_qk_l2norm_in_kernel:
                qt, kt = F.normalize(qt, dim=-1), F.normalize(kt, dim=-1)
            S = S * torch.exp(g[0, t].float())[:, None, None]
            pred = torch.einsum("hkv,hk->hv", S, kt)
            S = S + torch.einsum("hk,hv->hkv", kt, beta[0, t].float()[:, None] * (v[0, t] - pred))
            o[0, t] = torch.einsum("hkv,hk->hv", S, qt * sc)
        final[n] = S
    return o.to(q.dtype), (final if output_final_state else None)


def chunk_with_kv_swapped(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Returns the final state in the contract's [N, H, V, K] layout (a layout bug)."""
    o, final = chunk(*args, **kwargs)
    return o, None if final is None else final.transpose(-1, -2).contiguous()
