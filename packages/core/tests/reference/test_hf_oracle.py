"""The spec against HF transformers' own PyTorch paths, on random weights.

Each mixer (Mamba1 ``MambaMixer``, Mamba2 ``Mamba2Mixer`` with ``n_groups=1``, LFM2
``Lfm2ShortConv``) runs without a cache over whole sequences on CPU, so HF takes its torch
fallbacks. The spec composes the same layer from its ops with vLLM's layouts: a varlen batch
for the prefill, then ``causal_conv1d_update`` + ``selective_state_update`` for decode steps,
with the states in vLLM's slot layout. Decoded tokens must match HF's one-shot outputs for the
same positions. HF's ``mamba2_chunk_scan`` is also compared at op level with ``n_groups=2``
and initial states (its gated norm is bypassed there).
"""

from __future__ import annotations

import pytest
import torch
from _ref_utils import gen, idx

from mamba_backends.metadata import compute_chunk_metadata
from mamba_backends.reference import (
    causal_conv1d_fn,
    causal_conv1d_update,
    mamba_chunk_scan_combined_varlen,
    selective_scan_fn,
    selective_state_update,
    short_conv_mixer,
)

pytest.importorskip("transformers", reason="transformers is not installed")
mamba_mod = pytest.importorskip("transformers.models.mamba.modeling_mamba")
mamba2_mod = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
lfm2_mod = pytest.importorskip("transformers.models.lfm2.modeling_lfm2")
from transformers import Lfm2Config, Mamba2Config, MambaConfig  # noqa: E402

LENS = [7, 4]  # two prompts, packed
DECODE = 2  # tokens decoded one by one after each prompt
HIDDEN = 16


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.5) -> None:
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _hidden(seed: int) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(n + DECODE, HIDDEN, generator=g) for n in LENS]


def _assert_close(ours: torch.Tensor, hf: torch.Tensor) -> None:
    torch.testing.assert_close(ours, hf, atol=2e-4, rtol=2e-4)


def _qsl() -> torch.Tensor:
    return idx(*[sum(LENS[:i]) for i in range(len(LENS) + 1)])


@torch.no_grad()
def test_mamba1_mixer_matches_hf() -> None:
    cfg = MambaConfig(hidden_size=HIDDEN, state_size=4, intermediate_size=32, conv_kernel=4,
                      time_step_rank=4, num_hidden_layers=1, use_conv_bias=True)  # fmt: skip
    m = mamba_mod.MambaMixer(cfg, 0)
    _randomize(m, 1)
    hs = _hidden(2)
    hf = [m(h[None])[0] for h in hs]
    I, N, W, R = 32, 4, 4, 4
    A = -torch.exp(m.A_log.float())
    conv_w = m.conv1d.weight[:, 0]
    slots = idx(3, 1)
    conv_state = torch.zeros(4, W - 1, I).transpose(1, 2)  # vLLM's strided layout
    ssm_state = torch.zeros(4, I, N)

    def ssm_inputs(x_conv: torch.Tensor) -> tuple[torch.Tensor, ...]:  # x_conv (tokens, I)
        dt_r, B, C = torch.split(m.x_proj(x_conv), [R, N, N], dim=-1)
        return m.dt_proj.weight @ dt_r.T, B, C  # dt (I, tokens)

    # Prefill: both prompts in one varlen batch.
    h_p = torch.cat([h[:n] for h, n in zip(hs, LENS, strict=True)])
    xz = m.in_proj(h_p)
    x, z = xz.chunk(2, dim=-1)
    x_conv = causal_conv1d_fn(x.T, conv_w, m.conv1d.bias, conv_state, _qsl(), slots,
                              torch.tensor([False, False]), "silu")  # fmt: skip
    dt, B, C = ssm_inputs(x_conv.T)
    no_init = torch.tensor([False, False])
    y = selective_scan_fn(x_conv, ssm_state, dt.contiguous(), A, B.T[None].contiguous(),
                          C.T[None].contiguous(), m.D.float(), z.T.contiguous(),
                          m.dt_proj.bias.float(), delta_softplus=True, query_start_loc=_qsl(),
                          cache_indices=slots, has_initial_state=no_init)  # fmt: skip
    out_p = m.out_proj(y.T)
    _assert_close(out_p, torch.cat([o[:n] for o, n in zip(hf, LENS, strict=True)]))
    # Decode both requests together, one token per step.
    for step in range(DECODE):
        h_d = torch.stack([h[n + step] for h, n in zip(hs, LENS, strict=True)])
        x, z = m.in_proj(h_d).chunk(2, dim=-1)
        x_conv = causal_conv1d_update(x.clone(), conv_state, conv_w, m.conv1d.bias, "silu",
                                      conv_state_indices=slots)  # fmt: skip
        dt, B, C = ssm_inputs(x_conv)
        out = torch.empty_like(x_conv)
        selective_state_update(ssm_state, x_conv, dt.T, A, B, C, m.D, m.dt_proj.bias, z=z,
                               dt_softplus=True, state_batch_indices=slots,
                               dst_state_batch_indices=slots, out=out)  # fmt: skip
        _assert_close(
            m.out_proj(out), torch.stack([o[n + step] for o, n in zip(hf, LENS, strict=True)])
        )


@torch.no_grad()
def test_mamba2_mixer_matches_hf() -> None:
    H, P, N, G, W, chunk = 4, 8, 4, 1, 4, 4
    cfg = Mamba2Config(hidden_size=HIDDEN, num_heads=H, head_dim=P, state_size=N, n_groups=G,
                       conv_kernel=W, chunk_size=chunk, num_hidden_layers=1, expand=2)  # fmt: skip
    m = mamba2_mod.Mamba2Mixer(cfg, 0)
    _randomize(m, 3)
    hs = _hidden(4)
    hf = [m(h[None])[0] for h in hs]
    I = H * P
    conv_dim = I + 2 * G * N
    A = -torch.exp(m.A_log.float())
    conv_w = m.conv1d.weight[:, 0]
    slots = idx(2, 5)
    conv_state = torch.zeros(6, W - 1, conv_dim).transpose(1, 2)
    ssm_state = torch.zeros(6, H, P, N)

    def project(h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(m.in_proj(h), [I, conv_dim, H], dim=-1)

    h_p = torch.cat([h[:n] for h, n in zip(hs, LENS, strict=True)])
    gate, xBC, dt = project(h_p)
    xBC = causal_conv1d_fn(xBC.T, conv_w, m.conv1d.bias, conv_state, _qsl(), slots,
                           torch.tensor([False, False]), "silu").T  # fmt: skip
    x, B, C = torch.split(xBC, [I, G * N, G * N], dim=-1)
    T = x.shape[0]
    cu, last, seq_idx = compute_chunk_metadata(_qsl(), torch.zeros(2, dtype=torch.int64), chunk)
    y = torch.empty(T, H, P)
    final = mamba_chunk_scan_combined_varlen(
        x.reshape(T, H, P), dt, A, B.reshape(T, G, N), C.reshape(T, G, N), chunk, _qsl(), cu,
        last, seq_idx, y, D=m.D, dt_bias=m.dt_bias, dt_softplus=True,
        dt_limit=m.time_step_limit, state_dtype=ssm_state.dtype,
    )  # fmt: skip
    ssm_state[slots.long()] = final
    out_p = m.out_proj(m.norm(y.reshape(T, I), gate))
    _assert_close(out_p, torch.cat([o[:n] for o, n in zip(hf, LENS, strict=True)]))
    for step in range(DECODE):
        h_d = torch.stack([h[n + step] for h, n in zip(hs, LENS, strict=True)])
        gate, xBC, dt = project(h_d)
        xBC = causal_conv1d_update(xBC.clone(), conv_state, conv_w, m.conv1d.bias, "silu",
                                   conv_state_indices=slots)  # fmt: skip
        x, B, C = torch.split(xBC, [I, G * N, G * N], dim=-1)
        out = torch.empty(2, H, P)
        selective_state_update(
            ssm_state, x.reshape(2, H, P), dt[:, :, None].expand(-1, -1, P),
            A[:, None, None].expand(-1, P, N), B.reshape(2, G, N), C.reshape(2, G, N),
            m.D[:, None].expand(-1, P), m.dt_bias[:, None].expand(-1, P), dt_softplus=True,
            state_batch_indices=slots, dst_state_batch_indices=slots, out=out,
        )  # fmt: skip
        ours = m.out_proj(m.norm(out.reshape(2, I), gate))
        _assert_close(ours, torch.stack([o[n + step] for o, n in zip(hf, LENS, strict=True)]))


@torch.no_grad()
def test_ssd_op_matches_hf_chunk_scan_with_groups_and_initial_states() -> None:
    g = gen(5)
    T, H, P, N, G, chunk = 10, 4, 3, 2, 2, 4
    x, dt = torch.randn(1, T, H, P, generator=g), torch.randn(1, T, H, generator=g)
    A = -torch.rand(H, generator=g) - 0.1
    B, C = torch.randn(1, T, G, N, generator=g), torch.randn(1, T, G, N, generator=g)
    D, dt_bias = torch.randn(H, generator=g), torch.randn(H, generator=g)
    init = torch.randn(1, H, P, N, generator=g)
    hf_y, hf_state = mamba2_mod.mamba2_chunk_scan(
        x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, initial_states=init, dt_softplus=True,
        dt_limit=(0.05, 2.0), return_final_states=True,
    )  # fmt: skip
    cu, last, seq_idx = compute_chunk_metadata(idx(0, T), torch.tensor([0]), chunk)
    y = torch.empty(T, H, P)
    state = mamba_chunk_scan_combined_varlen(
        x[0], dt[0], A, B[0], C[0], chunk, idx(0, T), cu, last, seq_idx, y, D=D,
        dt_bias=dt_bias, initial_states=init, dt_softplus=True, dt_limit=(0.05, 2.0),
    )  # fmt: skip
    _assert_close(y, hf_y[0])
    _assert_close(state, hf_state)


@torch.no_grad()
def test_lfm2_short_conv_matches_hf() -> None:
    W = 3
    cfg = Lfm2Config(hidden_size=HIDDEN, conv_L_cache=W, conv_bias=True, num_hidden_layers=1,
                     layer_types=["conv"], num_attention_heads=2, num_key_value_heads=2,
                     intermediate_size=32)  # fmt: skip
    m = lfm2_mod.Lfm2ShortConv(cfg, 0)
    _randomize(m, 6)
    hs = _hidden(7)
    hf = [m(h[None])[0] for h in hs]
    conv_w = m.conv.weight[:, 0]
    slots = idx(1, 3)
    state = torch.zeros(4, W - 1, HIDDEN).transpose(1, 2)
    h_p = torch.cat([h[:n] for h, n in zip(hs, LENS, strict=True)])
    B, C, x = m.in_proj(h_p).chunk(3, dim=-1)
    y = short_conv_mixer(B, C, x, conv_w, m.conv.bias, state, _qsl(), slots,
                         torch.tensor([False, False]))  # fmt: skip
    _assert_close(m.out_proj(y), torch.cat([o[:n] for o, n in zip(hf, LENS, strict=True)]))
    for step in range(DECODE):
        h_d = torch.stack([h[n + step] for h, n in zip(hs, LENS, strict=True)])
        B, C, x = m.in_proj(h_d).chunk(3, dim=-1)
        y = short_conv_mixer(B, C, x, conv_w, m.conv.bias, state, state_indices_d=slots)
        _assert_close(
            m.out_proj(y), torch.stack([o[n + step] for o, n in zip(hf, LENS, strict=True)])
        )
