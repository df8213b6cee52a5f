"""The ops as ``torch.library`` custom ops (:mod:`mamba_backends.library`), on the spec's backends.

Every op in every form passes ``torch.library.opcheck``, compiles with ``fullgraph=True`` to the
eager result, and has a fake that gives the real result's metadata. The wrappers keep the
spec's signatures, register lazily and once, call the kernel directly in eager mode and the
registered op when traced.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mamba_backends import MambaBackend, clear_backend_cache, get_mamba_backend
from mamba_backends.backend import OP_NAMES
from mamba_backends.contract import ContractError
from mamba_backends.library import (
    CUSTOM_OPS_ENV,
    NAMESPACE,
    OP_FAMILIES,
    op_base_name,
    registered,
)
from mamba_backends.library.checks import (
    check_compiled,
    check_fake,
    op_cases,
    opcheck,
    ops_of,
)
from mamba_backends.reference import backends as ref_backends
from mamba_backends.reference import ops as spec
from mamba_backends.testing._tensors import Factory

REFERENCE = (
    ref_backends.ReferenceMamba1Backend,
    ref_backends.ReferenceMamba2Backend,
    ref_backends.ReferenceGDNBackend,
    ref_backends.ReferenceLinearAttentionBackend,
)
CASES = op_cases()


@pytest.fixture(scope="module")
def ref_ops() -> dict[str, Any]:
    return ops_of(*REFERENCE)


def test_every_op_has_a_family_and_a_case() -> None:
    all_ops = {op for ops in OP_NAMES.values() for op in ops}
    assert set(OP_FAMILIES) == all_ops
    assert {c.op for c in CASES} == all_ops
    mutating = {c.op for c in CASES if OP_FAMILIES[c.op].mutates}
    assert "selective_state_update" in mutating and "causal_conv1d_update" in mutating


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_opcheck(case: Any, ref_ops: dict[str, Any]) -> None:
    result = opcheck(ref_ops[case.op], case.build(Factory(0, "cpu")))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_compiled_fullgraph_equals_eager(case: Any, ref_ops: dict[str, Any]) -> None:
    check_compiled(ref_ops[case.op], case.build(Factory(1, "cpu")), backend="eager")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fake_gives_the_real_metadata(case: Any, ref_ops: dict[str, Any]) -> None:
    check_fake(ref_ops[case.op], case.build(Factory(2, "cpu")))


def test_inductor_decode_equals_eager(ref_ops: dict[str, Any]) -> None:
    (case,) = [c for c in op_cases(["selective_state_update"]) if c.form == "out"]
    check_compiled(ref_ops[case.op], case.build(Factory(3, "cpu")), backend="inductor")


def test_wrappers_keep_the_spec_signature(ref_ops: dict[str, Any]) -> None:
    for name, op in ref_ops.items():
        assert op is not getattr(spec, name), f"{name} is not wrapped"
        assert inspect.signature(op) == inspect.signature(getattr(spec, name)), name
        assert op.raw is getattr(spec, name)
        assert op.custom_op.name() == f"{NAMESPACE}::{op_base_name(spec.__name__, name)}"


def test_fake_on_meta_never_reads_values(ref_ops: dict[str, Any]) -> None:
    """The spec reads index values (``.tolist``), which meta tensors cannot give: only the
    registered fake can produce the result."""
    (case,) = [c for c in op_cases(["causal_conv1d_fn"])]
    meta = {
        n: v.to("meta") if isinstance(v, torch.Tensor) else v
        for n, v in case.build(Factory(0, "cpu")).items()
    }
    op = ref_ops[case.op]
    with pytest.raises((RuntimeError, NotImplementedError)):
        op.raw(**meta)
    out = op.custom_op(*op.schema_args(**meta))
    assert out.device.type == "meta" and out.shape == meta["x"].shape
    assert out.stride() == meta["x"].stride()  # channel-last x: the result keeps its strides


# --------------------------------------------------------------------------------------------
# Wrapping: eager fast path, escape hatches, argument crossing
# --------------------------------------------------------------------------------------------


def _conv_update_kwargs(seed: int = 0) -> dict[str, Any]:
    (case,) = [c for c in op_cases(["causal_conv1d_update"]) if c.form == "x_in_place"]
    return case.build(Factory(seed, "cpu"))


class _Spy:
    """A conv-update kernel with the spec's signature that records the activation it gets."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(spec.causal_conv1d_update).bind(*args, **kwargs)
        self.seen.append(bound.arguments.get("activation"))
        return spec.causal_conv1d_update(*args, **kwargs)


@pytest.fixture
def spy_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[type[MambaBackend], _Spy]]:
    """A short-conv backend whose ops module is a fresh module holding a spy kernel."""
    name = f"spy_ops_{id(monkeypatch)}"
    module = types.ModuleType(name)
    spy = _Spy()

    def causal_conv1d_update(*args: Any, **kwargs: Any) -> Any:
        return spy(*args, **kwargs)

    causal_conv1d_update.__signature__ = inspect.signature(spec.causal_conv1d_update)  # type: ignore[attr-defined]
    module.causal_conv1d_update = causal_conv1d_update  # type: ignore[attr-defined]
    module.causal_conv1d_fn = spec.causal_conv1d_fn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, module)

    class SpyBackend(MambaBackend):
        name = "test.spy"
        mamba_type = "short_conv"
        ops_module = module.__name__

    yield SpyBackend, spy
    clear_backend_cache()


def _registered_for(module_name: str) -> list[str]:
    return [e.name for e in registered() if e.name.startswith(op_base_name(module_name, ""))]


def test_registration_is_lazy_and_idempotent(spy_backend: Any) -> None:
    backend, _ = spy_backend
    ops = backend.ops()
    assert _registered_for(backend.ops_module) == []  # ops() alone registers nothing
    first = ops.causal_conv1d_update
    assert _registered_for(backend.ops_module) == [
        op_base_name(backend.ops_module, "causal_conv1d_update")
    ]
    assert backend.ops().causal_conv1d_update is first
    clear_backend_cache()  # a cache clear must not re-register (torch rejects duplicates)
    assert backend.ops().causal_conv1d_update is first
    assert len(_registered_for(backend.ops_module)) == 1


def test_a_backend_selected_by_path_is_wrapped(spy_backend: Any) -> None:
    backend, _ = spy_backend
    module = sys.modules[backend.ops_module]
    module.SpyBackend = backend  # type: ignore[attr-defined]
    backend.__module__ = module.__name__
    chosen = get_mamba_backend("short_conv", f"{module.__name__}.SpyBackend")
    assert chosen is backend
    assert chosen.ops().causal_conv1d_update.custom_op is not None


def test_eager_calls_the_kernel_and_always_mode_dispatches(
    spy_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, spy = spy_backend
    monkeypatch.delenv(CUSTOM_OPS_ENV, raising=False)
    backend.ops().causal_conv1d_update(**{**_conv_update_kwargs(), "activation": True})
    assert spy.seen == [True]  # eager: the kernel itself, arguments untouched
    monkeypatch.setenv(CUSTOM_OPS_ENV, "always")
    backend.ops().causal_conv1d_update(**{**_conv_update_kwargs(), "activation": True})
    assert spy.seen == [True, "silu"]  # through the registered op: normalised for the schema


def test_escape_hatches_hand_out_the_module_functions(
    spy_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = spy_backend
    monkeypatch.delenv(CUSTOM_OPS_ENV, raising=False)
    module = sys.modules[backend.ops_module]
    assert backend.ops(raw=True).causal_conv1d_update is module.causal_conv1d_update
    monkeypatch.setenv(CUSTOM_OPS_ENV, "0")
    assert backend.ops().causal_conv1d_update is module.causal_conv1d_update
    monkeypatch.delenv(CUSTOM_OPS_ENV)
    assert backend.ops().causal_conv1d_update is not module.causal_conv1d_update


def test_a_replaced_kernel_gets_its_own_op(
    spy_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, spy = spy_backend
    monkeypatch.setenv(CUSTOM_OPS_ENV, "always")
    old = backend.ops().causal_conv1d_update
    module = sys.modules[backend.ops_module]

    def broken(*args: Any, **kwargs: Any) -> Any:
        out = spec.causal_conv1d_update(*args, **kwargs)
        return out.mul_(-1.0)

    broken.__signature__ = inspect.signature(spec.causal_conv1d_update)  # type: ignore[attr-defined]
    monkeypatch.setattr(module, "causal_conv1d_update", broken)
    new = backend.ops().causal_conv1d_update
    assert new.custom_op != old.custom_op and new.custom_op.name().endswith("_v2")
    a, b = _conv_update_kwargs(), _conv_update_kwargs()
    torch.testing.assert_close(new(**a), -old(**b))  # each wrapper runs its own kernel
    assert spy.seen == ["silu"]  # only the old wrapper reached the spy


def test_results_that_are_arguments_are_the_arguments(
    ref_ops: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CUSTOM_OPS_ENV, "always")
    ops = ops_of(*REFERENCE)
    returned = {
        ("causal_conv1d_update", "x_in_place"): lambda kw, r: r is kw["x"],
        ("causal_conv1d_update", "out"): lambda kw, r: r is kw["out"],
        ("selective_scan_fn", "z"): lambda kw, r: r is kw["z"],
        ("selective_scan_fn", "delta"): lambda kw, r: r is kw["delta"],
        ("selective_state_update", "out"): lambda kw, r: r is kw["out"],
        ("mamba_chunk_scan_combined_varlen", "final_states_out"): lambda kw, r: r is None,
        ("chunk_gated_delta_rule", "core_attn_out"): lambda kw, r: (
            r[0] is kw["core_attn_out"] and r[1] is None
        ),
        ("fused_recurrent_gated_delta_rule", "in_place"): lambda kw, r: r[1] is kw["initial_state"],
    }
    for case in CASES:
        check = returned.get((case.op, case.form))
        if check is not None:
            kw = case.build(Factory(0, "cpu"))
            assert check(kw, ops[case.op](**kw)), case.id


def test_arguments_the_schema_cannot_carry_reach_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ``int`` activation cannot cross the schema (``str?``): the kernel gets it as is and
    rejects it with the contract's error; so does an error raised inside the registered op."""
    monkeypatch.setenv(CUSTOM_OPS_ENV, "always")
    op = ref_backends.ReferenceShortConvBackend.ops().causal_conv1d_update
    with pytest.raises(ContractError) as e:
        op(**{**_conv_update_kwargs(), "activation": 5})
    assert e.value.arg == "activation"
    kw = _conv_update_kwargs()
    kw["weight"] = kw["weight"][:, :1]  # W = 1: rejected inside the registered op
    with pytest.raises(ContractError):
        op(**kw)
    with pytest.raises(TypeError):
        op(**_conv_update_kwargs(), no_such_argument=1)
    with pytest.raises(TypeError):
        op(torch.zeros(2, 6), x=torch.zeros(2, 6))


def test_a_result_in_another_layout_is_returned_in_the_fakes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel may return a view into a padded buffer; compiled code indexes the result by the
    fake's (contiguous) strides, so the registered op returns it in that layout."""
    module = types.ModuleType(f"padded_ops_{id(monkeypatch)}")

    def lightning_attention(*args: Any, **kwargs: Any) -> Any:
        o, kv = spec.lightning_attention(*args, **kwargs)
        padded = torch.zeros(*o.shape[:-2], o.shape[-2] + 2, o.shape[-1], dtype=o.dtype)
        padded[..., : o.shape[-2], :] = o
        return padded[..., : o.shape[-2], :], kv

    lightning_attention.__signature__ = inspect.signature(spec.lightning_attention)  # type: ignore[attr-defined]
    module.lightning_attention = lightning_attention  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    class Padded(MambaBackend):
        name = "test.padded"
        mamba_type = "linear_attention"
        ops_module = module.__name__

    op = Padded.ops().lightning_attention
    (case,) = op_cases(["lightning_attention"])
    kw = case.build(Factory(0, "cpu"))
    assert not lightning_attention(**kw)[0].is_contiguous()
    o, _ = op.dispatching(**kw)
    assert o.is_contiguous()
    assert set(opcheck(op, kw).values()) == {"SUCCESS"}


def test_opcheck_catches_an_undeclared_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mutation table is what opcheck holds the kernel to: a kernel that writes an
    argument the contract says it only reads fails."""
    module = types.ModuleType(f"writer_ops_{id(monkeypatch)}")

    def lightning_attention(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(spec.lightning_attention).bind(*args, **kwargs)
        result = spec.lightning_attention(*args, **kwargs)
        bound.arguments["q"].mul_(2.0)  # q is read-only in the contract
        return result

    lightning_attention.__signature__ = inspect.signature(spec.lightning_attention)  # type: ignore[attr-defined]
    module.lightning_attention = lightning_attention  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    class Writer(MambaBackend):
        name = "test.writer"
        mamba_type = "linear_attention"
        ops_module = module.__name__

    op = Writer.ops().lightning_attention
    (case,) = op_cases(["lightning_attention"])
    with pytest.raises(Exception, match="mutat"):
        opcheck(op, case.build(Factory(0, "cpu")))


def test_a_kernel_with_another_signature_is_not_wrapped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = types.ModuleType(f"odd_ops_{id(monkeypatch)}")

    def linear_decode_forward(q: Any, k: Any, v: Any) -> Any:  # not the spec's parameters
        return q

    module.linear_decode_forward = linear_decode_forward  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    class Odd(MambaBackend):
        name = "test.odd"
        mamba_type = "linear_attention"
        ops_module = module.__name__

    with caplog.at_level("WARNING"):
        assert Odd.ops().linear_decode_forward is linear_decode_forward
    assert "signature differs" in caplog.text
