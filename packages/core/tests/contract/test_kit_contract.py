"""The kit's contract cases can fail: a drifted signature, a plain ValueError, a padded tail."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mamba_backends.reference import ops as ref_ops
from mamba_backends.testing import run_case
from mamba_backends.testing.cases import contract, fixed_cases


def _case(op: str, kind: str, bad: str | None = None) -> Any:
    for c in contract.fixed_cases():
        if c.op == op and c.kind == kind and (bad is None or c.params.get("bad") == bad):
            return c
    raise LookupError((op, kind, bad))


def test_signature_case_catches_drift() -> None:
    case = _case("mamba_chunk_scan_combined_varlen", "signature")
    assert run_case(ref_ops, case, "cpu").status == "pass"

    def ssd_032(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices,
                seq_idx, out, D=None, z=None, dt_bias=None, initial_states=None,
                dt_softplus=False, dt_limit=(0.0, float("inf")),
                return_intermediate_states=False, state_dtype=None):  # fmt: skip
        raise AssertionError("not called")

    r = run_case(SimpleNamespace(mamba_chunk_scan_combined_varlen=ssd_032), case, "cpu")
    assert r.status == "fail" and "parameters" in r.message, r


def test_bad_input_requires_contract_error_naming_op_and_argument() -> None:
    case = _case("selective_scan_fn", "bad_input", "z_expand")
    assert run_case(ref_ops, case, "cpu").status == "pass"

    def plain(*a: Any, **k: Any) -> Any:
        raise ValueError("selective_scan_fn: argument 'z' is expanded")

    r = run_case(SimpleNamespace(selective_scan_fn=plain), case, "cpu")
    assert r.status == "fail" and "ContractError" in r.message, r
    # every family's bad_input cases hold the op to the same rule
    bad = [c for c in fixed_cases("mamba2") if c.kind == "bad_input"]
    assert {c.op for c in bad} >= {"mamba_chunk_scan_combined_varlen", "selective_state_update"}


def test_padded_tail_case_compares_tail_rows() -> None:
    case = _case("selective_scan_fn", "padded_tail")
    assert run_case(ref_ops, case, "cpu").status == "pass"

    def scribbles(**kw: Any) -> Any:
        out = ref_ops.selective_scan_fn(**kw)
        kw["z"][:, -1] = 0.0  # writes a padding token
        return out

    r = run_case(SimpleNamespace(selective_scan_fn=scribbles), case, "cpu")
    assert r.status == "fail" and "z" in r.message, r
