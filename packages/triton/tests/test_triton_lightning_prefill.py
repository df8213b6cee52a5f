"""The Triton ``lightning_attention`` (lightning / linear attention prefill) against the spec.

The conformance kit's cases run in test_triton_conformance (``triton.linear_attention``);
here is what the kit's grid does not reach: chunks of 16 tokens that do not divide the block
size (partial chunks inside every block), state columns in several blocks, d and e that are
not powers of two, a strided history, ``ed`` as ``[1, h, 1, 1]``, slopes from 0.001 to 150
and an infinite slope beside an infinite state, and the custom-op checks.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from triton_test_helpers import DEVICE, F16, F32, close, cpu, rand

from mamba_backends import reference as spec
from mamba_backends.library.checks import check_compiled, check_fake, op_cases, opcheck
from mamba_backends.testing._tensors import Factory
from mamba_backends.tuning import override
from mamba_backends_triton import backends
from mamba_backends_triton.ops import lightning_attention

OP = "lightning_attention"
SMALL = {"BLOCK_T": 16, "BLOCK_E": 16, "num_warps": 1, "num_stages": 1}


@pytest.mark.parametrize("dtype", [F32, F16])
def test_partial_chunks_column_blocks_strided_history_strong_slopes(dtype):
    # n=61 in blocks of 24 (chunks of 16, 8 per block), d=12, e=40 (three column blocks, the
    # last partial); the history a transposed view; slopes 0.001, 0.7 and 150 (exp underflows).
    b, h, n, d, e, block = 2, 3, 61, 12, 40, 24
    q, k = (rand(b, h, n, d, dtype=dtype, seed=s, scale=0.5) for s in (1, 2))
    v = rand(b, h, n, e, dtype=dtype, seed=3)
    hist = rand(b, h, e, d, seed=4).transpose(-1, -2)
    ed = torch.tensor([0.001, 0.7, 150.0], device=DEVICE).view(1, h, 1, 1)
    o_e, kv_e = spec.lightning_attention(*(cpu(x) for x in (q, k, v, ed)), block, cpu(hist))
    with override(OP, SMALL):
        o, kv = lightning_attention(q, k, v, ed, block, hist)
    assert o.dtype == dtype and kv.dtype == F32 and kv.shape == (b, h, 4, d, e)
    close(o, o_e, dtype, "o")
    close(kv, kv_e, dtype, "block states")


def test_infinite_slope_and_state_take_the_token_path():
    # An inf history entry in a head whose slope is 150 (exp(-150) is 0 in float32 but not in
    # the spec's float64: the entry stays inf) and an infinite slope in another (0 * inf = NaN
    # in the spec); outputs and states follow the spec's NaN/inf positions.
    b, h, n, d, e = 1, 3, 20, 8, 16
    q, k, v = (rand(b, h, n, x, seed=s) for s, x in ((5, d), (6, d), (7, e)))
    hist = rand(b, h, d, e, seed=8)
    hist[0, 0, 2, 3] = float("inf")
    hist[0, 1, 1, 1] = float("inf")
    ed = torch.tensor([150.0, float("inf"), 0.1], device=DEVICE)
    o_e, kv_e = spec.lightning_attention(*(cpu(x) for x in (q, k, v, ed)), 16, cpu(hist))
    with override(OP, SMALL):
        o, kv = lightning_attention(q, k, v, ed, 16, hist)
    close(o, o_e, F32, "o")
    close(kv, kv_e, F32, "block states")


CUSTOM = [c for c in op_cases() if c.op == OP]


@pytest.mark.parametrize("case", CUSTOM, ids=lambda c: c.id)
def test_custom_op_opcheck_compile_and_fake(case: Any) -> None:
    op = backends.TritonLinearAttentionBackend.ops().lightning_attention
    assert op.custom_op.name() == f"mamba_backends::triton_ops__{OP}"
    result = opcheck(op, case.build(Factory(0, DEVICE)))
    assert set(result.values()) == {"SUCCESS"}, result
    check_compiled(op, case.build(Factory(1, DEVICE)), backend="eager")
    check_fake(op, case.build(Factory(2, DEVICE)))
