"""The Triton ops as ``torch.library`` custom ops (under ``TRITON_INTERPRET=1`` without a GPU):
opcheck and ``torch.compile(fullgraph=True)`` for a decode and a prefill op."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mamba_backends.library.checks import check_compiled, check_fake, op_cases, opcheck, ops_of
from mamba_backends.testing._tensors import Factory
from mamba_backends_triton import backends, interpreting

DEVICE = "cpu" if interpreting() else ("cuda" if torch.cuda.is_available() else "xpu")
PICKED = [
    ("selective_state_update", "out"),
    ("causal_conv1d_update", "x_in_place"),
    ("causal_conv1d_fn", "varlen"),
]
CASES = [c for c in op_cases() if (c.op, c.form) in PICKED]


@pytest.fixture(scope="module")
def ops() -> dict[str, Any]:
    return ops_of(
        backends.TritonMamba1Backend, backends.TritonMamba2Backend, backends.TritonShortConvBackend
    )


def test_every_triton_op_is_wrapped(ops: dict[str, Any]) -> None:
    for name, op in ops.items():
        assert op.custom_op.name() == f"mamba_backends::triton_ops__{name}", name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_opcheck(case: Any, ops: dict[str, Any]) -> None:
    result = opcheck(ops[case.op], case.build(Factory(0, DEVICE)))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_compiled_fullgraph_and_fake(case: Any, ops: dict[str, Any]) -> None:
    check_compiled(ops[case.op], case.build(Factory(1, DEVICE)), backend="eager")
    check_fake(ops[case.op], case.build(Factory(2, DEVICE)))
