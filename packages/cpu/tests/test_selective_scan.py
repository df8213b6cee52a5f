"""CPU Mamba1 selective_scan_fn against the spec, native and pure-PyTorch (chunked) paths."""

from __future__ import annotations

import pytest
import torch
from cpu_checks import close, qsl_of

from mamba_backends.reference import selective_scan as spec
from mamba_backends.reference import state_update as spec_su
from mamba_backends_cpu.ops import selective_scan as cpu
from mamba_backends_cpu.ops.state_update import selective_state_update


def make(Dm: int, N: int, G: int, T: int, dtype, gen, *, dt_shift: float = 0.0, tokens_last=True):
    """Inputs in vLLM's varlen shapes; ``tokens_last=False`` gives the channel-last views
    (``(T, Dm).t()``) that vLLM's Mamba1 mixer actually passes."""

    def mat(*shape: int) -> torch.Tensor:
        if tokens_last:
            return torch.randn(*shape, generator=gen)
        return torch.randn(*reversed(shape), generator=gen).permute(*reversed(range(len(shape))))

    u = mat(Dm, T).to(dtype)
    delta = (mat(Dm, T) + dt_shift).to(dtype)
    A = -torch.exp(torch.rand(Dm, N, generator=gen) * 2.5)
    B = mat(G, N, T).to(dtype)
    C = mat(G, N, T).to(dtype)
    D = torch.randn(Dm, generator=gen)
    z = mat(Dm, T).to(dtype)
    bias = torch.randn(Dm, generator=gen) * 0.5
    return u, delta, A, B, C, D, z, bias


CASES = [  # (lens, slots, has_init); slot -1 = pad, 0 = null block
    ([1], [2], [True]),
    ([63], [3], [False]),
    ([200, 1, 299], [5, -1, 1], [True, True, False]),
    ([7, 0, 30, 2], [4, 6, 0, 2], [False, True, True, True]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("tokens_last", [True, False])
def test_varlen_matches_spec(path, dtype, state_dtype, case, G, tokens_last) -> None:
    lens, slots, init = CASES[case]
    gen = torch.Generator().manual_seed(case + 10 * G)
    Dm, N, T = 8, 16, sum(lens)
    u, delta, A, B, C, D, z, bias = make(Dm, N, G, T, dtype, gen, tokens_last=tokens_last)
    # ssm states: a transposed (N-major) strided pool
    states = torch.randn(8, N, Dm, generator=gen).to(state_dtype).transpose(1, 2)
    ref_states, before = states.clone(), states.clone()
    d1, z1, d2, z2 = delta.clone(), z.clone(), delta.clone(), z.clone()
    qsl, idx, hi = qsl_of(lens), torch.tensor(slots, dtype=torch.int32), torch.tensor(init)
    res = cpu.selective_scan_fn(u, states, d1, A, B, C, D, z1, bias, True, qsl, idx, hi)
    ref = spec.selective_scan_fn(u, ref_states, d2, A, B, C, D, z2, bias, True, qsl, idx, hi)
    assert ref is z2
    assert res is z1
    close(z1, z2, dtype)  # gated output; skipped tokens keep their old values in both
    close(d1, d2, dtype)  # delta receives the ungated output, as vLLM's kernel
    close(states, ref_states, state_dtype)
    written = {s for s, n in zip(slots, lens, strict=True) if s > 0 and n > 0}
    for s in range(8):
        if s not in written:
            assert torch.equal(states[s], before[s]), f"slot {s} changed"


@pytest.mark.parametrize(
    ("Dm", "N", "G"),
    [(40, 16, 1), (40, 32, 2), (24, 8, 1), (18, 80, 1)],  # partial 16-channel blocks, N
)  # 16 (registers), 32/8 (any N up to 64), 80 (scalar kernel)
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("with_z", [True, False])
@pytest.mark.parametrize("tokens_last", [True, False])
def test_channel_blocks_and_state_sizes(path, Dm, N, G, softplus, with_z, tokens_last) -> None:
    gen = torch.Generator().manual_seed(Dm + N + G)
    lens = [37, 16, 70]  # tiles of 16 tokens: partial, exact, partial
    T = sum(lens)
    u, delta, A, B, C, D, z, bias = make(Dm, N, G, T, torch.float32, gen, tokens_last=tokens_last)
    if not softplus:  # dt is used as given: keep it positive (decaying states)
        delta, bias = delta.abs() * 0.5, bias.abs()
    states = torch.randn(5, Dm, N, generator=gen)
    ref_states = states.clone()
    qsl, idx = qsl_of(lens), torch.tensor([3, 1, 4], dtype=torch.int32)
    hi = torch.tensor([True, False, True])
    d1, d2 = delta.clone(), delta.clone()
    z1, z2 = (z.clone(), z.clone()) if with_z else (None, None)
    cpu.selective_scan_fn(u, states, d1, A, B, C, D, z1, bias, softplus, qsl, idx, hi)
    spec.selective_scan_fn(u, ref_states, d2, A, B, C, D, z2, bias, softplus, qsl, idx, hi)
    close(d1, d2, torch.float32)
    if z1 is not None and z2 is not None:
        close(z1, z2, torch.float32)
    close(states, ref_states, torch.float32)


@pytest.mark.parametrize(("Dm", "N"), [(40, 16), (24, 32), (18, 80)])
@pytest.mark.parametrize("tokens_last", [True, False])
def test_bf16_storage_in_place(path, Dm, N, tokens_last) -> None:
    """bf16 u/delta/z (the native kernel reads and writes them as they are, every block size
    and the scalar kernel past N = 64): outputs within bf16 tolerance of the spec, in place."""
    gen = torch.Generator().manual_seed(Dm * N)
    lens = [37, 16, 70]
    bf = torch.bfloat16
    u, delta, A, B, C, D, z, bias = make(Dm, N, 1, sum(lens), bf, gen, tokens_last=tokens_last)
    states = torch.randn(5, Dm, N, generator=gen)
    ref_states = states.clone()
    qsl, idx = qsl_of(lens), torch.tensor([3, 1, 4], dtype=torch.int32)
    hi = torch.tensor([True, False, True])
    d1, z1, d2, z2 = delta.clone(), z.clone(), delta.clone(), z.clone()
    res = cpu.selective_scan_fn(u, states, d1, A, B, C, D, z1, bias, True, qsl, idx, hi)
    spec.selective_scan_fn(u, ref_states, d2, A, B, C, D, z2, bias, True, qsl, idx, hi)
    assert res is z1 and z1.dtype == bf and d1.dtype == bf
    close(z1, z2, bf)
    close(d1, d2, bf)
    close(states, ref_states, bf)


@pytest.mark.parametrize("tokens_last", [True, False])
def test_infinite_and_huge_dt(path, tokens_last) -> None:
    """dt = inf (an infinite dt u), dt far past the unclamped 2^t range (the saturating step)
    and a NaN delta: the spec's values, NaN and inf positions included."""
    gen = torch.Generator().manual_seed(11)
    Dm, N, lens = 24, 16, [40, 9]
    T = sum(lens)
    u, delta, A, B, C, D, z, bias = make(Dm, N, 1, T, torch.float32, gen, tokens_last=tokens_last)
    delta[3, 5] = float("inf")
    delta[10, 20:23] = 200.0  # dt * |A| * log2(e) up to ~7000: 2^t saturates to 0
    delta[17, 30] = float("nan")
    states = torch.randn(3, Dm, N, generator=gen)
    ref_states = states.clone()
    qsl, idx = qsl_of(lens), torch.tensor([1, 2], dtype=torch.int32)
    d1, z1, d2, z2 = delta.clone(), z.clone(), delta.clone(), z.clone()
    cpu.selective_scan_fn(u, states, d1, A, B, C, D, z1, bias, True, qsl, idx)
    spec.selective_scan_fn(u, ref_states, d2, A, B, C, D, z2, bias, True, qsl, idx)
    assert not torch.isfinite(z2).all()  # the case reaches the non-finite values
    close(z1, z2, torch.float32)
    close(d1, d2, torch.float32)
    close(states, ref_states, torch.float32)


def test_batched_form_without_z(path) -> None:
    gen = torch.Generator().manual_seed(5)
    nb, Dm, N, L = 3, 6, 4, 9
    u = torch.randn(nb, Dm, L, generator=gen)
    delta = torch.randn(nb, Dm, L, generator=gen)
    A = -torch.rand(Dm, N, generator=gen)
    B, C = torch.randn(nb, N, L, generator=gen), torch.randn(nb, N, L, generator=gen)
    states = torch.randn(4, Dm, N, generator=gen)
    ref_states = states.clone()
    d1, d2 = delta.clone(), delta.clone()
    hi = torch.tensor([True, False, True])
    res = cpu.selective_scan_fn(u, states, d1, A, B, C, has_initial_state=hi)
    spec.selective_scan_fn(u, ref_states, d2, A, B, C, has_initial_state=hi)
    assert res is d1
    close(d1, d2, torch.float32)
    close(states, ref_states, torch.float32)


def test_strong_decay_is_stable(path) -> None:
    """Large dt*|A| (log decays far beyond fp32's exp range per block) stays exact."""
    gen = torch.Generator().manual_seed(6)
    Dm, N, lens = 8, 16, [40, 25]
    u, delta, A, B, C, D, z, bias = make(Dm, N, 1, sum(lens), torch.float32, gen, dt_shift=3.0)
    A = A * 8  # |A| up to ~100, dt ~3: one token decays by up to e^-300
    states = torch.zeros(3, Dm, N)
    ref_states = states.clone()
    qsl, idx = qsl_of(lens), torch.tensor([1, 2], dtype=torch.int32)
    z1, z2 = z.clone(), z.clone()
    cpu.selective_scan_fn(u, states, delta.clone(), A, B, C, D, z1, bias, True, qsl, idx)
    spec.selective_scan_fn(u, ref_states, delta.clone(), A, B, C, D, z2, bias, True, qsl, idx)
    assert torch.isfinite(z1).all()
    close(z1, z2, torch.float32)
    close(states, ref_states, torch.float32)


def test_split_prefill_then_decode_equals_one_shot(path) -> None:
    gen = torch.Generator().manual_seed(7)
    Dm, N, T = 8, 16, 50
    u, delta, A, B, C, D, z, bias = make(Dm, N, 1, T, torch.float32, gen)
    one = torch.zeros(2, Dm, N)
    y_one = cpu.selective_scan_fn(
        u, one, delta.clone(), A, B, C, D, z.clone(), bias, True, qsl_of([T]),
        torch.tensor([1], dtype=torch.int32),
    )  # fmt: skip
    st = torch.zeros(2, Dm, N)
    idx = torch.tensor([1], dtype=torch.int32)
    ys = []
    for a, b, init in ((0, 20, False), (20, 45, True)):
        ys.append(
            cpu.selective_scan_fn(
                u[:, a:b],
                st,
                delta[:, a:b].clone(),
                A,
                B[:, :, a:b],
                C[:, :, a:b],
                D,
                z[:, a:b].clone(),
                bias,
                True,
                qsl_of([b - a]),
                idx,
                torch.tensor([init]),
            )  # fmt: skip
        )
    for t in range(45, T):  # decode steps through the Mamba1 form of selective_state_update
        y = selective_state_update(
            st, u[:, t][None], delta[:, t][None], A, B[0, :, t][None], C[0, :, t][None], D,
            bias, z=z[:, t][None], dt_softplus=True, state_batch_indices=idx,
        )  # fmt: skip
        ys.append(y.t())
    close(torch.cat(ys, dim=1), y_one, torch.float32)
    close(st, one, torch.float32)
    # and the spec's decode agrees with ours on the same step
    st2 = st.clone()
    t = T - 1
    args = (u[:, t][None], delta[:, t][None], A, B[0, :, t][None], C[0, :, t][None], D, bias)
    y1 = selective_state_update(st, *args, dt_softplus=True, state_batch_indices=idx)
    y2 = spec_su.selective_state_update(st2, *args, dt_softplus=True, state_batch_indices=idx)
    close(y1, y2, torch.float32)


def test_batch_equals_per_sequence(path) -> None:
    gen = torch.Generator().manual_seed(8)
    Dm, N, lens = 8, 16, [9, 1, 14]
    u, delta, A, B, C, D, z, bias = make(Dm, N, 1, sum(lens), torch.float32, gen)
    init = torch.randn(4, Dm, N, generator=gen)
    idx = torch.tensor([3, 1, 2], dtype=torch.int32)
    hi = torch.tensor([True, False, True])
    st_b, z_b = init.clone(), z.clone()
    cpu.selective_scan_fn(
        u, st_b, delta.clone(), A, B, C, D, z_b, bias, True, qsl_of(lens), idx, hi
    )
    st_s, q = init.clone(), qsl_of(lens)
    for i in range(3):
        a, b = int(q[i]), int(q[i + 1])
        zi = z[:, a:b].clone()
        cpu.selective_scan_fn(
            u[:, a:b], st_s, delta[:, a:b].clone(), A, B[:, :, a:b], C[:, :, a:b], D, zi, bias,
            True, qsl_of([b - a]), idx[i : i + 1], hi[i : i + 1],
        )  # fmt: skip
        torch.testing.assert_close(zi, z_b[:, a:b], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(st_s, st_b, rtol=1e-6, atol=1e-6)


def test_bad_input_raises_before_any_write() -> None:
    gen = torch.Generator().manual_seed(9)
    Dm, N, T = 4, 8, 6
    u, delta, A, B, C, D, z, bias = make(Dm, N, 1, T, torch.float32, gen)
    st = torch.randn(3, Dm, N, generator=gen)
    before, z0 = st.clone(), z.clone()
    qsl = qsl_of([2, 4])
    with pytest.raises(ValueError, match="cache_indices"):
        cpu.selective_scan_fn(
            u, st, delta, A, B, C, D, z, bias, True, qsl, torch.tensor([1, 3], dtype=torch.int32)
        )
    with pytest.raises(ValueError, match="'A'"):
        cpu.selective_scan_fn(u, st, delta, A[:2], B, C, D, z, bias, True, qsl)
    with pytest.raises(NotImplementedError, match="initial_state_idx"):
        cpu.selective_scan_fn(
            u, st, delta, A, B, C, D, z, bias, True, qsl, initial_state_idx=torch.zeros(2)
        )
    assert torch.equal(st, before) and torch.equal(z, z0)
