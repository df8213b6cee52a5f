"""The conformance kit run on the spec itself, and mutants that prove the kit can fail.

On the reference backends the comparisons against the spec are trivially exact, but the
invariants are not: split (pieces + decode steps vs one shot), batch (alone vs together),
canary and in-place (pad -1 / null block 0 / unrelated slots / page padding bit-identical),
strided layouts and bad input are real checks of the spec. The mutants below break one rule
each in a copy of the spec's ops and must be caught, with the expected message.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from mamba_backends.backend import OP_NAMES
from mamba_backends.reference import ops as ref_ops
from mamba_backends.reference.backends import (
    ReferenceGDNBackend,
    ReferenceLinearAttentionBackend,
    ReferenceMamba1Backend,
    ReferenceMamba2Backend,
    ReferenceShortConvBackend,
)
from mamba_backends.testing import (
    TOLERANCES,
    CaseResult,
    conformance_tests,
    run_case,
    tolerance_for,
)
from mamba_backends.testing import cases as registry
from mamba_backends.testing.case import Case

TestReferenceConformance = conformance_tests(
    [
        ReferenceMamba1Backend,
        ReferenceMamba2Backend,
        ReferenceShortConvBackend,
        ReferenceGDNBackend,
        ReferenceLinearAttentionBackend,
    ]
)

# The grid-structure checks below cover the SSM families; gdn and linear_attention cases carry
# their own shape vocabulary (no state dtype for the gating op, `n` for lightning).
KIT_TYPES = ("mamba1", "mamba2", "short_conv")
# short_conv_mixer: the spec's LFM2 mixer core; its cases run for types that list it.
ALL_OPS = sorted({op for t in KIT_TYPES for op in OP_NAMES[t]} | {"short_conv_mixer"})


# --- the kit's own structure ---------------------------------------------------------------


def test_tolerance_table_is_loosest_of_case_dtypes() -> None:
    assert tolerance_for(torch.float32) == TOLERANCES[torch.float32]
    assert tolerance_for(torch.float32, torch.bfloat16) == TOLERANCES[torch.bfloat16]
    assert tolerance_for(torch.float16, torch.float32) == TOLERANCES[torch.float16]
    with pytest.raises(ValueError, match="int32"):
        tolerance_for(torch.int32)


@pytest.mark.parametrize("mamba_type", KIT_TYPES)
def test_grid_covers_the_matrix_invariants_and_odd_sizes(mamba_type: str) -> None:
    cases = registry.fixed_cases(mamba_type)
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for op in OP_NAMES[mamba_type]:
        mine = [c for c in cases if c.op == op]
        pairs = {(c.dtype, c.state_dtype) for c in mine if c.kind == "oneshot"}
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            assert any(p[0] == dt for p in pairs), (op, dt)
            assert any(p[1] == dt for p in pairs), (op, dt)
        assert any(c.kind == "bad_input" for c in mine), op
        quick = [c for c in mine if c.quick and c.kind != "signature"]  # signatures cost nothing
        assert 2 <= len(quick) <= 6, (op, len(quick))
        assert {c.dtype for c in quick} >= {torch.float32, torch.bfloat16}, op
    kinds = {c.kind for c in cases}
    assert {"oneshot", "split", "batch", "bad_input"} <= kinds
    lens = {n for c in cases for n in c.params.get("lens", ())}
    assert {1, 63} <= lens
    assert any(sum(c.params.get("lens", ())) >= 500 for c in cases), "a T=500 case"
    if mamba_type != "mamba1":
        assert {c.params.get("state") for c in cases} >= {"sd", "page"}


def test_backends_resolve_from_paths_classes_lists_and_platforms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mamba_backends.platform import Platform
    from mamba_backends.testing import backend_device, resolve_backends

    path = "mamba_backends.reference.backends.ReferenceMamba2Backend"
    assert resolve_backends(path) == [ReferenceMamba2Backend]
    assert resolve_backends([ReferenceMamba1Backend, path]) == [
        ReferenceMamba1Backend,
        ReferenceMamba2Backend,
    ]

    class OnlyShortConv(Platform):
        name = "fake"

        def get_mamba_backend_cls(self, mamba_type: str, selected: str | None) -> str | None:
            if mamba_type == "short_conv":
                return "mamba_backends.reference.backends.ReferenceShortConvBackend"
            return None

    assert resolve_backends(OnlyShortConv) == [ReferenceShortConvBackend]
    with pytest.raises(TypeError, match="MambaBackend"):
        resolve_backends(int)
    monkeypatch.delenv("MAMBA_BACKENDS_TEST_DEVICE", raising=False)
    assert backend_device(ReferenceMamba2Backend) == torch.device("cpu")
    assert backend_device(ReferenceMamba2Backend, "meta") == torch.device("meta")
    monkeypatch.setenv("MAMBA_BACKENDS_TEST_DEVICE", "cpu:0")
    assert backend_device(ReferenceMamba2Backend) == torch.device("cpu:0")


class _SeededPicker:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: Any) -> Any:
        return self.rng.choice(list(options))

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


@pytest.mark.parametrize("mamba_type", KIT_TYPES)
def test_drawn_cases_apply_to_their_type(mamba_type: str) -> None:
    for op in registry.drawable_ops(mamba_type):
        for seed in range(15):
            case = registry.draw_case(op, _SeededPicker(seed), mamba_type)
            assert case.op == op
            assert case.applies_to(mamba_type), case.id


# --- mutants: each breaks one rule and must be caught --------------------------------------


def _ops_with(**mutants: Callable[..., Any]) -> SimpleNamespace:
    ops = {name: getattr(ref_ops, name) for name in ALL_OPS}
    ops.update(mutants)
    return SimpleNamespace(**ops)


def _cases(op: str, kinds: Iterable[str] | None = None) -> list[Case]:
    seen: dict[str, Case] = {}
    for c in registry.fixed_cases(None, ops=(op,)):
        if kinds is None or c.kind in kinds:
            seen.setdefault(c.id, c)
    return list(seen.values())


def _run(op: str, ops: Any, kinds: Iterable[str] | None = None) -> list[CaseResult]:
    return [run_case(ops, c, "cpu") for c in _cases(op, kinds)]


def _assert_caught(results: list[CaseResult], needle: str) -> None:
    bad = [r for r in results if r.status in ("fail", "error")]
    assert bad, "the mutant passed every case: the kit cannot see this bug"
    assert any(needle in r.message for r in bad), [r.message for r in bad][:3]


def _clone_pool(t: torch.Tensor) -> torch.Tensor:
    return t.clone()


def conv_fn_shifted(x: torch.Tensor, *a: Any, **k: Any) -> Any:
    return ref_ops.causal_conv1d_fn(x, *a, **k) + 0.05


def conv_fn_pad_is_a_slot(*a: Any, cache_indices: torch.Tensor, conv_states: Any, **k: Any) -> Any:
    idx = torch.where(cache_indices < 0, conv_states.shape[0] - 1, cache_indices)
    return ref_ops.causal_conv1d_fn(*a, cache_indices=idx, conv_states=conv_states, **k)


def conv_fn_contiguous_copy(*a: Any, conv_states: torch.Tensor, **k: Any) -> Any:
    return ref_ops.causal_conv1d_fn(*a, conv_states=conv_states.contiguous(), **k)


def conv_fn_swallows_errors(x: torch.Tensor, *a: Any, **k: Any) -> Any:
    try:
        return ref_ops.causal_conv1d_fn(x, *a, **k)
    except (ValueError, TypeError):
        return x


def conv_fn_single_seq_ignores_init(*a: Any, query_start_loc: torch.Tensor, **k: Any) -> Any:
    if query_start_loc.numel() == 2:  # a "fast path" for one sequence that forgets the state
        k["has_initial_state"] = torch.zeros_like(k["has_initial_state"])
    return ref_ops.causal_conv1d_fn(*a, query_start_loc=query_start_loc, **k)


def conv_update_null_is_a_slot(*a: Any, **k: Any) -> Any:
    return ref_ops.causal_conv1d_update(*a, null_block_id=-12345, **k)


def conv_update_state_not_written(*a: Any, conv_state: torch.Tensor, **k: Any) -> Any:
    return ref_ops.causal_conv1d_update(*a, conv_state=conv_state.clone(), **k)


def ssu_groups_by_modulo(state: Any, x: Any, dt: Any, A: Any, B: Any, C: Any, **k: Any) -> Any:
    if B.dim() == 3 and B.shape[1] > 1:  # head h reads group h % G instead of h // (H / G)
        H, G = x.shape[1], B.shape[1]
        g = torch.arange(H) % G
        B, C = B[:, g], C[:, g]
    return ref_ops.selective_state_update(state, x, dt, A, B, C, **k)


def ssu_ignores_dst(*a: Any, dst_state_batch_indices: Any = None, **k: Any) -> Any:
    return ref_ops.selective_state_update(*a, **k)


def ssu_state_copy(state: torch.Tensor, *a: Any, **k: Any) -> Any:
    return ref_ops.selective_state_update(state.clone(), *a, **k)


def scan_ignores_has_init(*a: Any, has_initial_state: torch.Tensor, **k: Any) -> Any:
    return ref_ops.selective_scan_fn(*a, has_initial_state=torch.ones_like(has_initial_state), **k)


def scan_in_bf16(u: torch.Tensor, *a: Any, **k: Any) -> Any:
    out = ref_ops.selective_scan_fn(u, *a, **k)
    return out.to(torch.bfloat16).to(out.dtype)


def mixer_state_copy(*a: Any, **k: Any) -> Any:
    B, C, x, weight, bias, conv_state = a
    return ref_ops.short_conv_mixer(B, C, x, weight, bias, conv_state.clone(), **k)


def mixer_unscaled(B: torch.Tensor, C: torch.Tensor, *a: Any, **k: Any) -> Any:
    return ref_ops.short_conv_mixer(B, torch.ones_like(C), *a, **k)  # forgets the C gate


def ssd_ignores_initial_states(*a: Any, initial_states: Any = None, **k: Any) -> Any:
    return ref_ops.mamba_chunk_scan_combined_varlen(*a, initial_states=None, **k)


def ssd_clobbers_x(x: torch.Tensor, *a: Any, **k: Any) -> Any:
    states = ref_ops.mamba_chunk_scan_combined_varlen(x, *a, **k)
    x[0].zero_()
    return states


MUTANTS = [
    ("causal_conv1d_fn", conv_fn_shifted, None, "out"),
    ("causal_conv1d_fn", conv_fn_pad_is_a_slot, None, "changed outside the indexed slots"),
    ("causal_conv1d_fn", conv_fn_contiguous_copy, None, "conv_states[slots"),
    ("causal_conv1d_fn", conv_fn_swallows_errors, ("bad_input",), "accepted the bad input"),
    ("causal_conv1d_fn", conv_fn_single_seq_ignores_init, ("batch",), "alone"),
    ("causal_conv1d_update", conv_update_null_is_a_slot, None, "changed outside"),
    ("causal_conv1d_update", conv_update_state_not_written, ("oneshot",), "conv_state[slots"),
    ("selective_state_update", ssu_groups_by_modulo, ("oneshot",), "out"),
    ("selective_state_update", ssu_ignores_dst, ("oneshot",), "changed outside"),
    ("selective_state_update", ssu_state_copy, ("batch",), "state[slots"),
    ("selective_scan_fn", scan_ignores_has_init, ("oneshot",), "out"),
    ("selective_scan_fn", scan_in_bf16, ("oneshot",), "x the tolerance"),
    ("short_conv_mixer", mixer_state_copy, ("oneshot",), "conv_state[slots"),
    ("short_conv_mixer", mixer_unscaled, ("oneshot",), "y (non-pad rows)"),
    ("mamba_chunk_scan_combined_varlen", ssd_ignores_initial_states, ("oneshot",), "states"),
    ("mamba_chunk_scan_combined_varlen", ssd_clobbers_x, ("oneshot",), "x was modified"),
]


@pytest.mark.parametrize(
    ("op", "mutant", "kinds", "needle"), MUTANTS, ids=[m[1].__name__ for m in MUTANTS]
)
def test_mutant_is_caught(
    op: str, mutant: Callable[..., Any], kinds: tuple[str, ...] | None, needle: str
) -> None:
    _assert_caught(_run(op, _ops_with(**{op: mutant}), kinds), needle)


# The split cases must catch a decode op that loses the state between steps, through the
# outputs of later steps (not only through the final state).
SPLIT_MUTANTS = [
    ("causal_conv1d_update", "causal_conv1d_update", conv_update_state_not_written),
    ("selective_scan_fn", "selective_state_update", ssu_state_copy),
    ("mamba_chunk_scan_combined_varlen", "selective_state_update", ssu_state_copy),
    ("short_conv_mixer", "short_conv_mixer", mixer_state_copy),
]


@pytest.mark.parametrize(
    ("op", "broken", "mutant"), SPLIT_MUTANTS, ids=[m[0] for m in SPLIT_MUTANTS]
)
def test_split_invariant_catches_lost_state(
    op: str, broken: str, mutant: Callable[..., Any]
) -> None:
    _assert_caught(_run(op, _ops_with(**{broken: mutant}), ("split",)), "split vs one shot")


def test_not_implemented_op_is_reported_as_such() -> None:
    def missing(*a: Any, **k: Any) -> Any:
        raise NotImplementedError("causal_conv1d_fn: activation='relu' is not supported")

    results = _run("causal_conv1d_fn", _ops_with(causal_conv1d_fn=missing), ("oneshot",))
    assert {r.status for r in results} == {"not_implemented"}
    assert "activation" in results[0].message


def test_short_conv_mixer_cases_pass_on_the_spec() -> None:
    """No backend type lists short_conv_mixer yet, so its cases run here on the spec."""
    results = _run("short_conv_mixer", _ops_with())
    assert {r.status for r in results} == {"pass"}, [r.message for r in results if not r.ok]
    assert {c.kind for c in _cases("short_conv_mixer")} == {"oneshot", "split", "bad_input"}
