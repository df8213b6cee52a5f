"""Input builders: one per op, vLLM 0.32 argument names, layouts and serving conventions.

Each builder takes the shape parameters of a row (see :mod:`mamba_backends.bench.cases`), the
activation dtype and the device, and returns :class:`~mamba_backends.bench.harness.Inputs`.
Values follow the models' initialisations (``A = -exp(A_log)``, ``dt`` through softplus around
0.001..0.1, GDN gating ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``), so
states stay bounded across repeated decode calls. States live in a pool of ``batch + 1`` slots
indexed by a shuffled ``1..batch`` (slot 0 is the null block); conv states are the
``(dim, W-1)`` view of a ``(W-1, dim)`` page, as vLLM hands them out. Arguments that only a
baseline adapter needs start with ``_`` and are not passed to the op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mamba_backends.bench.harness import Inputs

#: Decode rows whose states must not fit the last-level cache: a ``batch`` of ``"l3"`` is the
#: smallest power of two whose state pool exceeds this many bytes (2x a 32 MiB L3).
L3_STATE_BYTES = 64 * 2**20

FP32 = torch.float32


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype, device: torch.device) -> Any:
    return torch.randn(*shape, generator=g, dtype=FP32).to(device=device, dtype=dtype)


def _uniform(g: torch.Generator, *shape: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=FP32)


def _dt_bias(g: torch.Generator, n: int) -> torch.Tensor:
    """Inverse softplus of dt drawn log-uniformly in [0.001, 0.1] (the Mamba init), fp32."""
    dt = torch.exp(_uniform(g, n, lo=math.log(1e-3), hi=math.log(1e-1)))
    return dt + torch.log(-torch.expm1(-dt))


def _nbytes(*ts: torch.Tensor | None) -> int:
    """Bytes actually stored (stride-0 expansions count once)."""
    total = 0
    for t in ts:
        if t is None:
            continue
        span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True) if st > 0)
        total += span * t.element_size()
    return total


def resolve_batch(batch: int | str, slot_bytes: int) -> int:
    """``batch`` as an int; ``"l3"`` picks a batch whose states exceed :data:`L3_STATE_BYTES`."""
    if isinstance(batch, int):
        return batch
    if batch != "l3":
        raise ValueError(f"batch must be an int or 'l3', got {batch!r}")
    b = 1
    while b * slot_bytes <= L3_STATE_BYTES:
        b *= 2
    return b


def _slots(g: torch.Generator, batch: int, device: torch.device) -> torch.Tensor:
    """Shuffled slot indices 1..batch (int32); slot 0 is the null block."""
    return (torch.randperm(batch, generator=g) + 1).to(device=device, dtype=torch.int32)


def _qsl(seqlens: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``query_start_loc``: int32 ``(batch + 1,)`` cumulative sequence lengths from 0."""
    return torch.tensor((0, *seqlens), dtype=torch.int64).cumsum(0).to(device, torch.int32)


def _conv_pool(
    g: torch.Generator, slots: int, dim: int, W: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A ``(slots, dim, W-1)`` strided view of a ``(slots, W-1, dim)`` page (vLLM's SD layout)."""
    return _randn(g, slots, W - 1, dim, dtype=dtype, device=device).transpose(1, 2)


def _ret(result: Any, args: dict[str, Any]) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result


def _out(result: Any, args: dict[str, Any]) -> torch.Tensor:
    out: torch.Tensor = args["out"]
    return out


def conv1d_fn(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``causal_conv1d_fn``: x ``(dim, T)`` (a transposed view of ``(T, dim)``), weight
    ``(dim, W)``, conv_states ``(batch+1, dim, W-1)``, half the sequences with initial state."""
    g = _gen(1)
    dim, W, seqlens = p["dim"], p["W"], tuple(p["seqlens"])
    T, nseq = sum(seqlens), len(seqlens)
    x = _randn(g, T, dim, dtype=dtype, device=device).t()
    args = {
        "x": x,
        "weight": _randn(g, dim, W, dtype=dtype, device=device) / math.sqrt(W),
        "bias": _randn(g, dim, dtype=dtype, device=device),
        "conv_states": _conv_pool(g, nseq + 1, dim, W, dtype, device),
        "query_start_loc": _qsl(seqlens, device),
        "cache_indices": _slots(g, nseq, device),
        "has_initial_state": (torch.arange(nseq) % 2 == 1).to(device),
        "activation": "silu",
    }
    return Inputs(args, _ret, tokens=T, flops=2.0 * W * dim * T, batch=nseq)


def conv1d_update(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``causal_conv1d_update`` decode: x ``(batch, dim)`` (overwritten by the output),
    conv_state ``(batch+1, dim, W-1)`` SD view, conv_state_indices ``(batch,)``."""
    g = _gen(2)
    dim, W = p["dim"], p["W"]
    esize = torch.empty((), dtype=dtype).element_size()
    batch = resolve_batch(p["batch"], dim * (W - 1) * esize)
    args = {
        "x": _randn(g, batch, dim, dtype=dtype, device=device),
        "conv_state": _conv_pool(g, batch + 1, dim, W, dtype, device),
        "weight": _randn(g, dim, W, dtype=dtype, device=device) / math.sqrt(W),
        "bias": _randn(g, dim, dtype=dtype, device=device),
        "activation": "silu",
        "conv_state_indices": _slots(g, batch, device),
    }
    state = batch * dim * (W - 1) * esize
    io = 2 * _nbytes(args["x"]) + _nbytes(args["weight"], args["bias"])
    return Inputs(
        args,
        _ret,
        restore=("x",),
        prefill=False,
        tokens=batch,
        bytes_moved=2 * state + io,
        state_bytes=state,
        batch=batch,
    )


def ssu(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``selective_state_update``, Mamba2 heads form as vLLM's mixer calls it: state
    ``(batch+1, H, P, N)`` (``state_dtype``), x ``(batch, H, P)``, dt/dt_bias/D/A expanded over
    P (and N) with stride 0, B/C ``(batch, G, N)``, preallocated out, dt_softplus."""
    if p.get("form") == "mamba1":
        return ssu_mamba1(p, dtype, device)
    g = _gen(3)
    H, P, N, G = p["H"], p["P"], p["N"], p["G"]
    sdt = p.get("state_dtype", FP32)
    esize = torch.empty((), dtype=sdt).element_size()
    batch = resolve_batch(p["batch"], H * P * N * esize)
    A = -torch.exp(_uniform(g, H, lo=0.0, hi=math.log(16.0))).to(device)
    args = {
        "state": _randn(g, batch + 1, H, P, N, dtype=sdt, device=device) * 0.1,
        "x": _randn(g, batch, H, P, dtype=dtype, device=device),
        "dt": _randn(g, batch, H, dtype=dtype, device=device)[:, :, None].expand(-1, -1, P),
        "A": A[:, None, None].expand(-1, P, N),
        "B": _randn(g, batch, G, N, dtype=dtype, device=device),
        "C": _randn(g, batch, G, N, dtype=dtype, device=device),
        "D": torch.ones(H, device=device)[:, None].expand(-1, P),
        "z": None,
        "dt_bias": _dt_bias(g, H).to(device)[:, None].expand(-1, P),
        "dt_softplus": True,
        "state_batch_indices": _slots(g, batch, device),
        "out": torch.empty(batch, H, P, dtype=dtype, device=device),
    }
    state = batch * H * P * N * esize
    io = _nbytes(args["x"], args["dt"], args["B"], args["C"], args["out"])
    return Inputs(
        args,
        _out,
        prefill=False,
        tokens=batch,
        bytes_moved=2 * state + io,
        state_bytes=state,
        batch=batch,
    )


def ssu_mamba1(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``selective_state_update``, Mamba1 form (``form="mamba1"``): state ``(batch+1, dim, N)``
    (``state_dtype``), x/dt/z ``(batch, dim)``, A ``(dim, N)`` (S4D real init), B/C
    ``(batch, N)``, D/dt_bias ``(dim,)``, preallocated out, dt_softplus."""
    g = _gen(10)
    dim, N = p["dim"], p["N"]
    sdt = p.get("state_dtype", FP32)
    esize = torch.empty((), dtype=sdt).element_size()
    batch = resolve_batch(p["batch"], dim * N * esize)
    args = {
        "state": _randn(g, batch + 1, dim, N, dtype=sdt, device=device) * 0.1,
        "x": _randn(g, batch, dim, dtype=dtype, device=device),
        "dt": _randn(g, batch, dim, dtype=dtype, device=device),
        "A": -torch.arange(1, N + 1, dtype=FP32).repeat(dim, 1).to(device),
        "B": _randn(g, batch, N, dtype=dtype, device=device),
        "C": _randn(g, batch, N, dtype=dtype, device=device),
        "D": torch.ones(dim, device=device),
        "z": _randn(g, batch, dim, dtype=dtype, device=device),
        "dt_bias": _dt_bias(g, dim).to(device),
        "dt_softplus": True,
        "state_batch_indices": _slots(g, batch, device),
        "out": torch.empty(batch, dim, dtype=dtype, device=device),
    }
    state = batch * dim * N * esize
    io = _nbytes(args["x"], args["dt"], args["B"], args["C"], args["z"], args["out"])
    return Inputs(
        args,
        _out,
        prefill=False,
        tokens=batch,
        bytes_moved=2 * state + io,
        state_bytes=state,
        batch=batch,
    )


def _chunk_metadata(
    seqlens: tuple[int, ...], chunk: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """SSD varlen chunk metadata (no prefix caching): chunks start at each sequence start."""
    bounds, seq_idx, last = [0], [], []
    pos = 0
    for i, n in enumerate(seqlens):
        end = pos + n
        while pos < end:
            pos = min(pos + chunk, end)
            bounds.append(pos)
            seq_idx.append(i)
        last.append(len(seq_idx) - 1)

    def i32(v: list[int]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int32, device=device)

    return {
        "cu_seqlens": _qsl(seqlens, device),
        "cu_chunk_seqlens": i32(bounds),
        "last_chunk_indices": i32(last),
        "seq_idx": i32(seq_idx),
    }


def ssd(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``mamba_chunk_scan_combined_varlen``: x ``(T, H, P)``, dt ``(T, H)``, A ``(H,)``,
    B/C ``(T, G, N)``, chunk metadata, preallocated out, D, dt_bias, dt_softplus, fp32 states."""
    g = _gen(4)
    H, P, N, G, chunk = p["H"], p["P"], p["N"], p["G"], p["chunk"]
    seqlens = tuple(p["seqlens"])
    T = sum(seqlens)
    args: dict[str, Any] = {
        "x": _randn(g, T, H, P, dtype=dtype, device=device),
        "dt": _randn(g, T, H, dtype=dtype, device=device),
        "A": -torch.exp(_uniform(g, H, lo=0.0, hi=math.log(16.0))).to(device),
        "B": _randn(g, T, G, N, dtype=dtype, device=device),
        "C": _randn(g, T, G, N, dtype=dtype, device=device),
        "chunk_size": chunk,
        **_chunk_metadata(seqlens, chunk, device),
        "out": torch.empty(T, H, P, dtype=dtype, device=device),
        "D": torch.ones(H, device=device),
        "z": None,
        "dt_bias": _dt_bias(g, H).to(device),
        "initial_states": None,
        "dt_softplus": True,
        "state_dtype": p.get("state_dtype", FP32),
    }
    # Recurrent form: per token and state element, decay * h + (dt x) B (3) and C . h (2).
    return Inputs(args, _out, tokens=T, flops=5.0 * T * H * P * N, batch=len(seqlens))


def scan(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``selective_scan_fn`` (Mamba1) varlen: u/delta/z ``(dim, T)``, A ``(dim, N)`` (S4D
    real init), B/C ``(1, N, T)``, ssm_states ``(batch+1, dim, N)`` fp32, delta_softplus.
    The output is written into ``z`` (given), so ``delta`` and ``z`` are restored per call."""
    g = _gen(5)
    dim, N = p["dim"], p["N"]
    seqlens = tuple(p["seqlens"])
    T, nseq = sum(seqlens), len(seqlens)
    A = -torch.arange(1, N + 1, dtype=FP32).repeat(dim, 1).to(device)
    args = {
        "u": _randn(g, dim, T, dtype=dtype, device=device),
        "ssm_states": _randn(g, nseq + 1, dim, N, dtype=FP32, device=device) * 0.1,
        "delta": _randn(g, dim, T, dtype=dtype, device=device) * 0.5,
        "A": A,
        "B": _randn(g, 1, N, T, dtype=dtype, device=device),
        "C": _randn(g, 1, N, T, dtype=dtype, device=device),
        "D": torch.ones(dim, device=device),
        "z": _randn(g, dim, T, dtype=dtype, device=device),
        "delta_bias": _dt_bias(g, dim).to(device),
        "delta_softplus": True,
        "query_start_loc": _qsl(seqlens, device),
        "cache_indices": _slots(g, nseq, device),
        "has_initial_state": (torch.arange(nseq) % 2 == 1).to(device),
    }
    return Inputs(args, _ret, restore=("delta", "z"), tokens=T, flops=5.0 * T * dim * N, batch=nseq)


def _gdn_common(
    g: torch.Generator, p: dict[str, Any], n: int, dtype: torch.dtype, device: torch.device
) -> dict[str, Any]:
    """q/k ``(1, n, H, K)``, v ``(1, n, HV, V)``, gating from raw a/b/A_log/dt_bias:
    g ``(1, n, HV)`` fp32 = ``-exp(A_log) * softplus(a + dt_bias)``, beta = ``sigmoid(b)``."""
    H, HV, K, V = p["H"], p["HV"], p["K"], p["V"]
    # Raw gating inputs and parameters in the activation dtype (as a model holds them), the
    # gating itself in fp32 from those rounded values.
    A_log = torch.log(_uniform(g, HV, lo=1.0, hi=16.0)).to(dtype).float()
    dt_bias = _dt_bias(g, HV).to(dtype).float()
    a = torch.randn(n, HV, generator=g).to(dtype).float()
    b = torch.randn(n, HV, generator=g).to(dtype).float()
    gate = -torch.exp(A_log) * F.softplus(a + dt_bias)
    return {
        "q": _randn(g, 1, n, H, K, dtype=dtype, device=device),
        "k": _randn(g, 1, n, H, K, dtype=dtype, device=device),
        "v": _randn(g, 1, n, HV, V, dtype=dtype, device=device),
        "g": gate[None].to(device),
        "beta": torch.sigmoid(b)[None].to(device=device, dtype=dtype),
        "_A_log": A_log.to(device=device, dtype=dtype),
        "_dt_bias": dt_bias.to(device=device, dtype=dtype),
        "_a": a.to(device=device, dtype=dtype),
        "_b": b.to(device=device, dtype=dtype),
    }


def gdn_chunk(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``chunk_gated_delta_rule`` varlen prefill (Qwen3-Next GDN): initial_state
    ``(batch, HV, V, K)`` (our ``[HV, V, K]`` convention), output_final_state, cu_seqlens,
    use_qk_l2norm_in_kernel."""
    g = _gen(6)
    seqlens = tuple(p["seqlens"])
    T, nseq = sum(seqlens), len(seqlens)
    HV, K, V = p["HV"], p["K"], p["V"]
    sdt = p.get("state_dtype", FP32)
    args = _gdn_common(g, p, T, dtype, device)
    args.update(
        initial_state=_randn(g, nseq, HV, V, K, dtype=sdt, device=device) * 0.1,
        output_final_state=True,
        cu_seqlens=_qsl(seqlens, device),
        use_qk_l2norm_in_kernel=True,
    )
    # Recurrent form per token and v-head: decay, S k, rank-1 update, S q (7 V K).
    return Inputs(
        args,
        _ret,
        restore=("initial_state",),
        tokens=T,
        flops=7.0 * T * HV * V * K,
        batch=nseq,
    )


def gdn_recurrent(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``fused_recurrent_gated_delta_rule`` decode: one token per sequence (varlen form,
    cu_seqlens = 0..batch), states in a ``(batch+1, HV, V, K)`` pool updated in place through
    ssm_state_indices."""
    g = _gen(7)
    HV, K, V = p["HV"], p["K"], p["V"]
    sdt = p.get("state_dtype", FP32)
    esize = torch.empty((), dtype=sdt).element_size()
    batch = resolve_batch(p["batch"], HV * V * K * esize)
    args = _gdn_common(g, p, batch, dtype, device)
    args.update(
        initial_state=_randn(g, batch + 1, HV, V, K, dtype=sdt, device=device) * 0.1,
        inplace_final_state=True,
        cu_seqlens=torch.arange(batch + 1, dtype=torch.int32, device=device),
        ssm_state_indices=_slots(g, batch, device),
        use_qk_l2norm_in_kernel=True,
    )
    state = batch * HV * V * K * esize
    io = _nbytes(args["q"], args["k"], args["v"], args["g"], args["beta"]) + _nbytes(args["v"])
    return Inputs(
        args,
        _ret,
        prefill=False,
        tokens=batch,
        bytes_moved=2 * state + io,
        state_bytes=state,
        batch=batch,
    )


def _slopes(H: int) -> torch.Tensor:
    """MiniMax/ALiBi-style per-head decay rates ``2^(-8 (h+1) / H)``, fp32 ``(H,)``."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], dtype=FP32)


def lightning(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``lightning_attention`` prefill: q/k/v ``(B, H, T, D)``, ed ``(H,)``, block_size,
    kv_history ``(B, H, D, D)`` fp32."""
    g = _gen(8)
    B, H, D, T = p["B"], p["H"], p["D"], p["T"]
    s = 1.0 / math.sqrt(D)
    args = {
        "q": _randn(g, B, H, T, D, dtype=dtype, device=device) * s,
        "k": _randn(g, B, H, T, D, dtype=dtype, device=device) * s,
        "v": _randn(g, B, H, T, D, dtype=dtype, device=device),
        "ed": _slopes(H).to(device),
        "block_size": p.get("block", 256),
        "kv_history": _randn(g, B, H, D, D, dtype=FP32, device=device) * 0.1,
    }
    # Recurrent form per token and head: decay and k v^T update (3 D^2), q . S (2 D^2).
    return Inputs(
        args,
        _ret,
        restore=("kv_history",),
        tokens=B * T,
        flops=5.0 * B * T * H * D * D,
        batch=B,
    )


def linear_decode(p: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Inputs:
    """``linear_decode_forward``: q/k/v ``(batch, H, 1, D)``, kv_caches ``(batch+1, H, D, D)``
    fp32 updated in place through slot_idx ``(batch,)``, slope_rate ``(H,)``."""
    g = _gen(9)
    H, D = p["H"], p["D"]
    batch = resolve_batch(p["batch"], H * D * D * 4)
    s = 1.0 / math.sqrt(D)
    args = {
        "q": _randn(g, batch, H, 1, D, dtype=dtype, device=device) * s,
        "k": _randn(g, batch, H, 1, D, dtype=dtype, device=device) * s,
        "v": _randn(g, batch, H, 1, D, dtype=dtype, device=device),
        "kv_caches": _randn(g, batch + 1, H, D, D, dtype=FP32, device=device) * 0.1,
        "slope_rate": _slopes(H).to(device),
        "slot_idx": _slots(g, batch, device).to(torch.int64),
    }
    state = batch * H * D * D * 4
    io = _nbytes(args["q"], args["k"], args["v"]) + _nbytes(args["q"])
    return Inputs(
        args,
        _ret,
        prefill=False,
        tokens=batch,
        bytes_moved=2 * state + io,
        state_bytes=state,
        batch=batch,
    )


#: Op name -> input builder.
BUILDERS: dict[str, Callable[[dict[str, Any], torch.dtype, torch.device], Inputs]] = {
    "causal_conv1d_fn": conv1d_fn,
    "causal_conv1d_update": conv1d_update,
    "selective_state_update": ssu,
    "mamba_chunk_scan_combined_varlen": ssd,
    "selective_scan_fn": scan,
    "chunk_gated_delta_rule": gdn_chunk,
    "fused_recurrent_gated_delta_rule": gdn_recurrent,
    "lightning_attention": lightning,
    "linear_decode_forward": linear_decode,
}
