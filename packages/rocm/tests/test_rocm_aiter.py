"""The aiter backends: chosen only when aiter is importable and passes its probe against the
spec, else the Triton fallback; the adapters' conversions (fake aiter modules, CPU tensors)."""

from __future__ import annotations

import _fake_aiter as fake
import pytest
import torch

from mamba_backends import select_mamba_backend
from mamba_backends.reference import ops as spec
from mamba_backends_rocm.aiter import ops
from mamba_backends_rocm.aiter.backends import AiterGdnBackend, AiterShortConvBackend
from mamba_backends_rocm.aiter.probe import probe_chunk_gdn, probe_conv_update
from mamba_backends_rocm.platform import ROCM_BACKENDS, RocmPlatform

AITER_CONV = "mamba_backends_rocm.aiter.backends.AiterShortConvBackend"
AITER_GDN = "mamba_backends_rocm.aiter.backends.AiterGdnBackend"


def test_correct_aiter_ops_pass_the_probes(fake_aiter):
    fake_aiter(conv_update=fake.conv_update, chunk=fake.chunk)
    assert probe_conv_update("cpu") is None
    assert probe_chunk_gdn("cpu") is None


@pytest.mark.parametrize(
    ("conv", "why"),
    [
        (fake.conv_update_ignoring_bias, "differs from the spec"),
        (fake.conv_update_that_raises, "raised RuntimeError"),
        (None, "not importable"),
    ],
)
def test_a_wrong_or_missing_conv_update_fails_its_probe(fake_aiter, conv, why):
    fake_aiter(conv_update=conv, chunk=fake.chunk)
    reason = probe_conv_update("cpu")
    assert reason is not None and why in reason


def test_a_layout_bug_in_the_chunk_op_fails_its_probe(fake_aiter):
    fake_aiter(conv_update=fake.conv_update, chunk=fake.chunk_with_kv_swapped)
    reason = probe_chunk_gdn("cpu")
    assert reason is not None and "final state" in reason


def test_selection_takes_aiter_when_it_passes(rocm_torch, fake_aiter):
    fake_aiter(conv_update=fake.conv_update, chunk=fake.chunk)
    p = RocmPlatform()
    assert p.get_mamba_backend_cls("short_conv", None) == AITER_CONV
    assert p.get_mamba_backend_cls("gdn", None) == AITER_GDN
    assert p.get_mamba_backend_cls("mamba2", None) == ROCM_BACKENDS["mamba2"]  # no aiter op
    choice = select_mamba_backend("short_conv")  # end to end: `info` shows this name
    assert (choice.rule, choice.backend.get_name()) == ("platform", "rocm.aiter.short_conv")
    assert p.describe()["vendor_native"][f"{AITER_CONV} on cpu"] == "ok"


def test_selection_falls_back_to_triton_when_the_probe_fails(rocm_torch, fake_aiter):
    fake_aiter(conv_update=fake.conv_update, chunk=fake.chunk_with_kv_swapped)
    p = RocmPlatform()
    assert p.get_mamba_backend_cls("short_conv", None) == AITER_CONV  # its conv op is fine
    assert p.get_mamba_backend_cls("gdn", None) == ROCM_BACKENDS["gdn"]  # chunk op is not
    fake_aiter(conv_update=fake.conv_update_ignoring_bias, chunk=fake.chunk)
    # Answers are cached per process: the new (broken) module is not probed again...
    assert p.get_mamba_backend_cls("short_conv", None) == AITER_CONV


def test_a_broken_conv_op_sends_both_types_to_triton(rocm_torch, fake_aiter):
    fake_aiter(conv_update=fake.conv_update_ignoring_bias, chunk=fake.chunk)
    p = RocmPlatform()
    assert p.get_mamba_backend_cls("short_conv", None) == ROCM_BACKENDS["short_conv"]
    assert p.get_mamba_backend_cls("gdn", None) == ROCM_BACKENDS["gdn"]
    choice = select_mamba_backend("short_conv")
    assert choice.backend.get_name() == "triton.short_conv"


def test_the_env_switch_turns_vendor_native_off(rocm_torch, fake_aiter):
    fake_aiter(conv_update=fake.conv_update, chunk=fake.chunk)
    rocm_torch.setenv("MAMBA_BACKENDS_ROCM_NATIVE", "0")
    assert RocmPlatform().get_mamba_backend_cls("gdn", None) == ROCM_BACKENDS["gdn"]


def test_backend_facts():
    for b, t in ((AiterShortConvBackend, "short_conv"), (AiterGdnBackend, "gdn")):
        assert b.mamba_type == t and b.supported_devices == ("cuda",)
        assert b.ops_module == "mamba_backends_rocm.aiter.ops"
        assert set(b.op_names()) <= set(dir(ops)) | set(ops.TRITON_OPS)


def _strided_state(slots: int, dim: int, cols: int) -> torch.Tensor:
    return torch.randn(slots, cols, dim).transpose(1, 2)  # vLLM's (dim, W-1) view


def test_conv_update_adapter_matches_the_spec_in_place_into_x(fake_aiter):
    fake_aiter(conv_update=fake.conv_update)
    torch.manual_seed(0)
    dim, W = 48, 3
    x = torch.randn(5, dim)
    weight, bias = torch.randn(dim, W), torch.randn(dim)
    state = _strided_state(7, dim, W - 1)
    idx = torch.tensor([[6, 1], [0, 2], [2, 3], [-1, 4], [4, 5]], dtype=torch.int32)  # 2-D
    want_x, want_state = x.clone(), state.clone()
    spec.causal_conv1d_update(want_x, want_state, weight, bias, True, idx)
    got = ops.causal_conv1d_update(x, state, weight, bias, True, idx)
    assert got is x  # written in place, as vLLM's op
    torch.testing.assert_close(x, want_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)
    assert torch.equal(state[0], want_state[0])  # the null block was not written


def test_conv_update_calls_aiter_has_not_covered_go_to_triton(fake_aiter, monkeypatch):
    fake_aiter(conv_update=fake.conv_update_that_raises)  # would raise if it were called
    calls = []

    class Triton:
        @staticmethod
        def causal_conv1d_update(*args):
            calls.append(args)
            return args[0]

    monkeypatch.setattr(ops, "_triton_ops", lambda: Triton)
    dim, W = 16, 4
    weight = torch.randn(dim, W)
    idx = torch.tensor([1, 2], dtype=torch.int32)
    accepted = torch.tensor([1, 2], dtype=torch.int32)
    # speculative decoding (a longer state), and a state wider than W-1
    ops.causal_conv1d_update(torch.randn(2, dim, 2), torch.randn(3, dim, W), weight,
                             conv_state_indices=idx, num_accepted_tokens=accepted)  # fmt: skip
    ops.causal_conv1d_update(torch.randn(2, dim), torch.randn(3, dim, W + 2), weight,
                             conv_state_indices=idx)  # fmt: skip
    ops.causal_conv1d_update(torch.randn(2, dim), torch.randn(3, dim, W - 1).half(), weight,
                             conv_state_indices=idx)  # mixed dtypes # fmt: skip
    assert len(calls) == 3
    assert calls[0][6] is accepted  # passed on positionally, in the contract's order


def test_chunk_adapter_converts_gva_and_state_layouts(fake_aiter):
    fake_aiter(chunk=fake.chunk)
    torch.manual_seed(1)
    T, H, HV, K, V = 7, 1, 3, 8, 4  # K != V: a transposed state would not even fit
    q, k = torch.randn(1, T, H, K), torch.randn(1, T, H, K)
    v = torch.randn(1, T, HV, V)
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, HV))
    beta = torch.rand(1, T, HV)
    h0 = torch.randn(2, HV, V, K).half()  # any float dtype
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out = torch.empty(1, T, HV, V)
    args = {"initial_state": h0, "output_final_state": True, "cu_seqlens": cu,
            "use_qk_l2norm_in_kernel": True}  # fmt: skip
    want_o, want_h = spec.chunk_gated_delta_rule(q, k, v, g, beta, **args)
    got_o, got_h = ops.chunk_gated_delta_rule(q, k, v, g, beta, **args, core_attn_out=out)
    assert got_o is out and got_h is not None and got_h.dtype == torch.float32
    torch.testing.assert_close(got_o, want_o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_h, want_h, rtol=1e-4, atol=1e-4)
    _, none = ops.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu)
    assert none is None
