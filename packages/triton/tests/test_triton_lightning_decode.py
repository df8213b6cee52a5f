"""The Triton ``linear_decode_forward`` (lightning / linear attention decode) against the spec.

The conformance kit's cases run in test_triton_conformance (``triton.linear_attention``);
here is what the kit's grid does not reach:
D that is not a power of two, caches split into several column blocks (tuning overrides),
strided caches (transposed, inside pages), NaN-filled pad/null/spare slots that stay
bit-identical, strongly decaying and infinite slopes, NaN/inf inputs, ``slope_rate`` as
``[H, 1, 1]``, and the custom-op checks.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from triton_test_helpers import DEVICE, F16, F32, close, rand, same_bits, strided_states

from mamba_backends import reference as spec
from mamba_backends.library.checks import check_compiled, check_fake, op_cases, opcheck
from mamba_backends.testing._tensors import Factory
from mamba_backends.tuning import override
from mamba_backends_triton import backends
from mamba_backends_triton.ops import linear_decode_forward

OP = "linear_decode_forward"


def _caches(layout: str, slots: int, H: int, D: int, dtype=F32, seed=9):
    """A cache pool ``(slots, H, D, D)`` and its base tensor (see ``strided_states``)."""
    return strided_states(layout, slots, H, D, D, dtype, seed)


def _run(q, k, v, kv, slopes, slots, cfg=None):
    """Ours on ``kv``, the spec on a CPU copy: (ours, spec's out, spec's caches)."""
    theirs = kv.detach().cpu().clone()
    want = spec.linear_decode_forward(q.cpu(), k.cpu(), v.cpu(), theirs, slopes.cpu(), slots.cpu())
    with override(OP, cfg or {"TILE": 64, "num_warps": 1, "num_stages": 1}):
        got = linear_decode_forward(q, k, v, kv, slopes, slots)
    return got, want, theirs


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize(("layout", "D"), [("contig", 24), ("transposed", 40), ("page", 16)])
def test_odd_dims_strided_caches_pad_and_null_slots(layout, D, dtype):
    # D=24/40 (padded rows), columns in blocks of 2 (TILE 64 / BLOCK_D); a pad (-1) and the
    # null block (0) among the slots; every slot no request reads holds NaN and stays as is.
    B, H, slots = 5, 3, 8
    q, k, v = (rand(B, H, 1, D, dtype=dtype, seed=s) for s in (1, 2, 3))
    kv, base = _caches(layout, slots, H, D, dtype)
    idx = [6, -1, 2, 0, 3]
    live = [s for s in idx if s > 0]
    for s in range(slots):
        if s not in live:
            kv[s] = float("nan")
    before = base.clone()
    slopes = torch.rand(H, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    got, want, theirs = _run(q, k, v, kv, slopes, torch.tensor(idx, device=DEVICE))
    assert got.shape == (B, H * D) and got.dtype == dtype
    close(got, want, dtype, "out")
    assert not got[[1, 3]].any(), "skipped rows not zero"
    close(kv[live], theirs[live], dtype, "written caches")
    rest = [s for s in range(slots) if s not in live]
    assert same_bits(base.view(slots, -1)[rest], before.view(slots, -1)[rest]), "slot changed"
    if layout == "page":
        assert same_bits(base[:, :5], before[:, :5]) and same_bits(base[:, -6:], before[:, -6:])


def test_strong_and_infinite_slopes_and_nonfinite_inputs():
    # slopes up to 150 (exp(-s) underflows), +inf (a full reset: 0 * kv, NaN where kv is inf),
    # -inf (exp(+inf) * kv); NaN in q, inf in k and v; slope_rate as [H, 1, 1]; D=12.
    B, H, D = 4, 4, 12
    q, k, v = (rand(B, H, 1, D, seed=s) for s in (5, 6, 7))
    q[0, 1, 0, 3] = float("nan")
    k[1, 2, 0, 5] = float("inf")
    v[2, 0, 0, 7] = -float("inf")
    kv = rand(5, H, D, D, seed=8)
    kv[4, 3, 2, 2] = float("inf")
    slopes = torch.tensor([150.0, float("inf"), 0.01, -float("inf")], device=DEVICE)
    got, want, theirs = _run(q, k, v, kv, slopes.view(H, 1, 1), torch.tensor([1, 2, 3, 4]))
    close(got, want, F32, "out")
    close(kv[1:], theirs[1:], F32, "caches")


def test_padded_rows_keep_an_infinite_output_infinite():
    # D=3 (BLOCK_D=4): v=+inf with positive k and q gives kv = k +inf^T and o = +inf in the
    # spec; a padded row holding 0 * inf = NaN would turn o into NaN.
    B, H, D = 1, 1, 3
    q = torch.full((B, H, 1, D), 0.5, device=DEVICE)
    k = torch.full((B, H, 1, D), 0.7, device=DEVICE)
    v = torch.ones(B, H, 1, D, device=DEVICE)
    v[0, 0, 0, 2] = float("inf")
    kv = torch.zeros(2, H, D, D, device=DEVICE)
    got, want, theirs = _run(q, k, v, kv, torch.full((H,), 0.3), torch.tensor([1]))
    assert want[0, 2] == float("inf")
    close(got, want, F32, "out")
    close(kv, theirs, F32, "caches")


def test_one_program_per_head_and_empty_batch():
    # The default tuning (the whole D x D tile in one program) and B=0.
    B, H, D = 2, 2, 32
    q, k, v = (rand(B, H, 1, D, seed=s) for s in (9, 10, 11))
    kv = rand(3, H, D, D, seed=12)
    slopes = torch.rand(H, generator=torch.Generator().manual_seed(13)).to(DEVICE)
    got, want, theirs = _run(
        q, k, v, kv, slopes, torch.tensor([2, 1]),
        {"TILE": 4096, "num_warps": 4, "num_stages": 1},
    )  # fmt: skip
    close(got, want, F32, "out")
    close(kv, theirs, F32, "caches")
    empty = linear_decode_forward(
        q[:0], k[:0], v[:0], kv, slopes, torch.tensor([], dtype=torch.int64)
    )
    assert empty.shape == (0, H * D)


CUSTOM = [c for c in op_cases() if c.op == OP]


@pytest.mark.parametrize("case", CUSTOM, ids=lambda c: c.id)
def test_custom_op_opcheck_compile_and_fake(case: Any) -> None:
    op = backends.TritonLinearAttentionBackend.ops().linear_decode_forward
    assert op.custom_op.name() == f"mamba_backends::triton_ops__{OP}"
    result = opcheck(op, case.build(Factory(0, DEVICE)))
    assert set(result.values()) == {"SUCCESS"}, result
    check_compiled(op, case.build(Factory(1, DEVICE)), backend="eager")
    check_fake(op, case.build(Factory(2, DEVICE)))
