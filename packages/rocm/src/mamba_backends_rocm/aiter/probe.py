"""One-shape checks of the aiter adapters against the executable spec, on the target device.

Each returns ``None`` when the adapter (aiter's kernel plus the boundary conversions of
:mod:`.ops`) agrees with :mod:`mamba_backends.reference` on small cases that carry the
serving conventions (vLLM's strided conv-state view, pad and null slots, packed sequences,
GVA, initial states), else the reason. They are a gate, not a test suite: on AMD hardware the
conformance kit (``nox -s test-rocm``) checks every backend the platform chooses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.reference import ops as spec
from mamba_backends_rocm.aiter import AITER_CHUNK_GDN, AITER_CONV_UPDATE, aiter_function

_TOL = {"rtol": 1e-3, "atol": 1e-3}
_GDN_TOL = {"rtol": 1e-2, "atol": 1e-2}  # a chunked algorithm against a token loop


def _importable(where: tuple[str, str]) -> str | None:
    try:
        aiter_function(where)
    except Exception as e:  # noqa: BLE001 - absent or broken: not used
        return f"{'.'.join(where)} is not importable ({type(e).__name__}: {e})"
    return None


def _differs(name: str, got: Tensor, want: Tensor, tol: dict[str, float]) -> str | None:
    got = got.detach().to("cpu", torch.float64)
    want = want.detach().to("cpu", torch.float64)
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)}, the spec gives {tuple(want.shape)}"
    if not torch.allclose(got, want, equal_nan=True, **tol):
        err = (got - want).abs().nan_to_num(float("inf")).max().item()
        return f"{name}: differs from the spec (max abs error {err:.3g})"
    return None


def probe_conv_update(device: str) -> str | None:
    """aiter's conv update against the spec: 4 requests (one pad, one null slot) on a
    ``(dim, W-1)`` view of a ``(W-1, dim)`` state buffer, one token each and 3 tokens each."""
    missing = _importable(AITER_CONV_UPDATE)
    if missing:
        return missing
    from mamba_backends_rocm.aiter.ops import aiter_conv_update

    gen = torch.Generator().manual_seed(11)
    slots, dim, W = 6, 64, 4
    weight = torch.randn(dim, W, generator=gen)
    bias = torch.randn(dim, generator=gen)
    idx = torch.tensor([3, -1, 0, 5], dtype=torch.int32)
    for shape in ((4, dim), (4, dim, 3)):
        x = torch.randn(*shape, generator=gen)
        buf = torch.randn(slots, W - 1, dim, generator=gen)
        want_state = buf.transpose(1, 2).clone()
        want = spec.causal_conv1d_update(
            x.clone(), want_state, weight, bias, "silu", idx, out=torch.zeros_like(x)
        )
        dev_buf = buf.to(device)
        got_state = dev_buf.transpose(1, 2)  # vLLM's layout: strided, updated in place
        got = torch.zeros_like(x, device=device)
        try:
            aiter_conv_update(x.to(device), got_state, weight.to(device), bias.to(device), True,
                              idx.to(device), 0, got)  # fmt: skip
        except Exception as e:  # noqa: BLE001
            return f"aiter causal_conv1d_update raised {type(e).__name__}: {e}"
        why = _differs(f"causal_conv1d_update x{shape} output", got, want, _TOL)
        why = why or _differs(f"causal_conv1d_update x{shape} state", got_state, want_state, _TOL)
        if why:
            return why
    return None


def probe_chunk_gdn(device: str) -> str | None:
    """aiter's chunked GDN against the spec: 2 packed sequences (5 and 7 tokens), H=2 q/k
    heads for HV=4 value heads, K=V=32, initial states, q/k l2-normalised in the kernel."""
    missing = _importable(AITER_CHUNK_GDN)
    if missing:
        return missing
    from mamba_backends_rocm.aiter.ops import chunk_gated_delta_rule

    gen = torch.Generator().manual_seed(12)
    T, H, HV, K, V = 12, 2, 4, 32, 32
    q = torch.randn(1, T, H, K, generator=gen)
    k = torch.randn(1, T, H, K, generator=gen)
    v = torch.randn(1, T, HV, V, generator=gen)
    g = F.logsigmoid(torch.randn(1, T, HV, generator=gen))
    beta = torch.rand(1, T, HV, generator=gen)
    h0 = 0.1 * torch.randn(2, HV, V, K, generator=gen)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    want_o, want_h = spec.chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
        use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    try:
        got_o, got_h = chunk_gated_delta_rule(
            q.to(device), k.to(device), v.to(device), g.to(device), beta.to(device),
            initial_state=h0.to(device), output_final_state=True, cu_seqlens=cu.to(device),
            use_qk_l2norm_in_kernel=True,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001
        return f"aiter chunk_gated_delta_rule raised {type(e).__name__}: {e}"
    if got_h is None:
        return "aiter chunk_gated_delta_rule returned no final state"
    assert want_h is not None  # output_final_state=True
    return _differs("chunk_gated_delta_rule output", got_o, want_o, _GDN_TOL) or _differs(
        "chunk_gated_delta_rule final state", got_h, want_h, _GDN_TOL
    )
