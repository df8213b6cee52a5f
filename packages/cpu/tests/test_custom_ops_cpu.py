"""The CPU ops as ``torch.library`` custom ops: opcheck, ``torch.compile(fullgraph=True)`` and
fakes, for every op in every form (see :mod:`mamba_backends.library.checks`)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from mamba_backends.library.checks import (
    check_compiled,
    check_fake,
    op_cases,
    opcheck,
    ops_of,
)
from mamba_backends.testing._tensors import Factory
from mamba_backends_cpu import backends
from mamba_backends_cpu import ops as cpu_ops

CPU = (
    backends.CpuMamba1Backend,
    backends.CpuMamba2Backend,
    backends.CpuShortConvBackend,
    backends.CpuGDNBackend,
    backends.CpuLinearAttentionBackend,
)
CASES = op_cases()


@pytest.fixture(scope="module")
def ops() -> dict[str, Any]:
    return ops_of(*CPU)


def test_every_cpu_op_is_wrapped_with_its_signature(ops: dict[str, Any]) -> None:
    assert set(ops) == {c.op for c in CASES}
    for name, op in ops.items():
        kernel = getattr(cpu_ops, name)
        assert op is not kernel and op.raw is kernel, name
        assert inspect.signature(op) == inspect.signature(kernel), name
        assert op.custom_op.name() == f"mamba_backends::cpu_ops__{name}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_opcheck(case: Any, ops: dict[str, Any]) -> None:
    result = opcheck(ops[case.op], case.build(Factory(0, "cpu")))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_compiled_fullgraph_equals_eager(case: Any, ops: dict[str, Any]) -> None:
    check_compiled(ops[case.op], case.build(Factory(1, "cpu")), backend="eager")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fake_gives_the_real_metadata(case: Any, ops: dict[str, Any]) -> None:
    check_fake(ops[case.op], case.build(Factory(2, "cpu")))


@pytest.mark.parametrize(
    "op, form",
    [("mamba_chunk_scan_combined_varlen", "final_states_out"), ("causal_conv1d_update", "out")],
)
def test_inductor_equals_eager(op: str, form: str, ops: dict[str, Any]) -> None:
    """vLLM's default backend: prefill (SSD, scattering its states) and decode (conv)."""
    (case,) = [c for c in op_cases([op]) if c.form == form]
    check_compiled(ops[op], case.build(Factory(3, "cpu")), backend="inductor")
