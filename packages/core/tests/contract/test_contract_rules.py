"""The contract's cross-cutting rules: one error type, no host sync, writable outputs,
aliasing, padded tails, and vLLM 0.33's final_states_out."""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from mamba_backends import contract as V
from mamba_backends.metadata import compute_chunk_metadata


def idx(*values: int, device: str = "cpu") -> Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


def test_contract_error_carries_op_and_argument() -> None:
    with pytest.raises(V.ContractError) as info:
        V.check_causal_conv1d_update_args(
            torch.zeros(2, 4), torch.zeros(3, 4, 2), torch.zeros(5, 3)
        )
    e = info.value
    assert (e.op, e.arg) == ("causal_conv1d_update", "weight")
    assert str(e).startswith("causal_conv1d_update: argument 'weight' ")
    assert isinstance(e, ValueError) and isinstance(e, TypeError)
    again = pickle.loads(pickle.dumps(e))
    assert (again.op, again.arg, str(again)) == (e.op, e.arg, str(e))
    # dtype errors are the same type
    with pytest.raises(V.ContractError, match="dtype") as info:
        V.check_causal_conv1d_update_args(
            torch.zeros(2, 4, dtype=torch.int32), torch.zeros(3, 4, 2), torch.zeros(4, 3)
        )
    assert info.value.arg == "x"


# --------------------------------------------------------------------------------------------
# No host synchronisation on accelerator tensors
# --------------------------------------------------------------------------------------------


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _meta_idx(n: int) -> Tensor:
    return _meta(n, dtype=torch.int32)


def _all_checks_on_meta() -> None:
    """Every checker, with well-formed meta tensors (which hold no values to read)."""
    dim, W, T, N, H, P, G = 4, 3, 6, 3, 4, 2, 2
    V.check_causal_conv1d_fn_args(
        _meta(dim, T), _meta(dim, W), _meta(dim), _meta(5, dim, W - 1), _meta_idx(3),
        _meta_idx(2), _meta(2, dtype=torch.bool),
    )  # fmt: skip
    V.check_causal_conv1d_update_args(
        _meta(T, dim), _meta(5, dim, W + 2), _meta(dim, W), conv_state_indices=_meta_idx(2),
        num_accepted_tokens=_meta_idx(2), query_start_loc=_meta_idx(3), out=_meta(T, dim),
    )  # fmt: skip
    V.check_selective_scan_args(
        _meta(dim, T), _meta(5, dim, N), _meta(dim, T), _meta(dim, N), _meta(G, N, T),
        _meta(G, N, T), z=_meta(dim, T), query_start_loc=_meta_idx(3), cache_indices=_meta_idx(2),
        has_initial_state=_meta(2, dtype=torch.bool),
    )  # fmt: skip
    V.check_selective_state_update_args(
        _meta(6, H, P, N), _meta(T, H, P), _meta(T, H, P), _meta(H, P, N), _meta(T, G, N),
        _meta(T, G, N), state_batch_indices=_meta(2, 3, dtype=torch.int32),
        num_accepted_tokens=_meta_idx(2), cu_seqlens=_meta_idx(3), out=_meta(T, H, P),
    )  # fmt: skip
    V.check_ssd_varlen_args(
        _meta(T, H, P), _meta(T, H), _meta(H), _meta(T, G, N), _meta(T, G, N), 4, _meta_idx(3),
        _meta_idx(4), _meta_idx(2), _meta_idx(3), _meta(T, H, P),
        final_states_out=_meta(5, H, P, N), final_state_indices=_meta_idx(2),
    )  # fmt: skip
    q = _meta(1, T, 2, 4)
    V.check_chunk_gated_delta_rule_args(
        q, q, _meta(1, T, 4, 4), _meta(1, T, 4), _meta(1, T, 4), None, _meta(2, 4, 4, 4),
        _meta_idx(3), _meta(1, T, 4, 4),
    )  # fmt: skip
    V.check_fused_recurrent_gated_delta_rule_args(
        q, q, _meta(1, T, 4, 4), _meta(1, T, 4), _meta(1, T, 4), None, _meta(7, 4, 4, 4), True,
        _meta_idx(3), _meta(2, 3, dtype=torch.int32), _meta_idx(2),
    )  # fmt: skip
    V.check_linear_decode_forward_args(
        _meta(2, H, 1, 4), _meta(2, H, 1, 4), _meta(2, H, 1, 4), _meta(5, H, 4, 4), _meta(H),
        _meta_idx(2), 32,
    )  # fmt: skip


def test_no_checker_reads_values_of_device_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # Belt and braces: any read of a non-CPU tensor's values fails loudly.
    originals = {n: getattr(torch.Tensor, n) for n in ("tolist", "item", "__bool__", "__int__")}

    def guard(name: str) -> Any:
        def read(self: Tensor, *a: Any, **k: Any) -> Any:
            if self.device.type != "cpu":
                raise AssertionError(f"{name}() read the values of a {self.device} tensor")
            return originals[name](self, *a, **k)

        return read

    for name in originals:
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    _all_checks_on_meta()
    # the debug switch is honoured for accelerator tensors, never for meta ones
    monkeypatch.setenv(V.CHECK_VALUES_ENV, "1")
    _all_checks_on_meta()
    cuda_like = SimpleNamespace(device=SimpleNamespace(type="cuda"), is_cpu=False, is_meta=False)
    assert V.values_enabled(None, cuda_like)  # type: ignore[arg-type]
    monkeypatch.delenv(V.CHECK_VALUES_ENV)
    assert not V.values_enabled(None, cuda_like)  # type: ignore[arg-type]
    assert V.values_enabled(True, cuda_like)  # type: ignore[arg-type]


def test_shape_checks_still_run_on_meta() -> None:
    with pytest.raises(V.ContractError, match="'delta'"):
        V.check_selective_scan_args(
            _meta(4, 6), _meta(5, 4, 3), _meta(4, 7), _meta(4, 3), _meta(3, 6), _meta(3, 6),
            query_start_loc=_meta_idx(3),
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Written tensors: no zero strides, no unsupported aliasing
# --------------------------------------------------------------------------------------------


def _scan_args(dim: int = 4, T: int = 6, N: int = 3) -> dict[str, Any]:
    return {
        "u": torch.zeros(dim, T), "ssm_states": torch.zeros(3, dim, N),
        "delta": torch.zeros(dim, T), "A": torch.zeros(dim, N), "B": torch.zeros(N, T),
        "C": torch.zeros(N, T),
        "z": torch.zeros(dim, T), "query_start_loc": idx(0, 2, 6), "cache_indices": idx(1, 2),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["z", "delta", "ssm_states"])
def test_scan_rejects_expanded_written_tensors(name: str) -> None:
    args = _scan_args()
    t = args[name]
    args[name] = t[..., :1].expand(t.shape) if name != "ssm_states" else t[:1].expand(t.shape)
    with pytest.raises(V.ContractError, match="expanded") as info:
        V.check_selective_scan_args(**args)
    assert info.value.arg == name


def test_scan_aliasing() -> None:
    dim, T = 4, 6
    # vLLM's layout: u and z are the two halves of one projection, interleaved in memory.
    proj = torch.zeros(T, 2 * dim).t()
    V.check_selective_scan_args(**{**_scan_args(), "u": proj[:dim], "z": proj[dim:]})
    args = _scan_args()
    with pytest.raises(V.ContractError, match="same tensor") as info:
        V.check_selective_scan_args(**{**args, "z": args["delta"]})
    assert info.value.arg in ("delta", "z")
    with pytest.raises(V.ContractError, match="overlaps") as info:
        V.check_selective_scan_args(**{**args, "u": proj[:dim], "delta": proj[1 : dim + 1]})
    assert info.value.arg == "delta"


def test_conv_update_rejects_expanded_or_overlapping_outputs() -> None:
    dim, W = 4, 3
    state, w = torch.zeros(6, dim, W - 1), torch.zeros(dim, W)
    x = torch.zeros(2, dim)
    V.check_causal_conv1d_update_args(x, state, w, out=x)  # in place: allowed
    with pytest.raises(V.ContractError, match="expanded") as info:
        V.check_causal_conv1d_update_args(torch.zeros(1, dim).expand(2, dim), state, w)
    assert info.value.arg == "x"
    with pytest.raises(V.ContractError, match="expanded") as info:
        V.check_causal_conv1d_update_args(x, state, w, out=torch.zeros(1, dim).expand(2, dim))
    assert info.value.arg == "out"
    buf = torch.zeros(3, dim)
    with pytest.raises(V.ContractError, match="overlaps") as info:
        V.check_causal_conv1d_update_args(buf[:2], state, w, out=buf[1:])
    assert info.value.arg == "out"
    page = torch.zeros(6, dim, W - 1 + 2)
    V.check_causal_conv1d_update_args(page[:2, :, 0], page[:, :, 1:3], w)  # disjoint columns
    with pytest.raises(V.ContractError, match="overlaps") as info:
        V.check_causal_conv1d_update_args(page[:2, :, 1], page[:, :, 1:3], w)
    assert info.value.arg in ("x", "conv_state")


def test_state_update_and_ssd_outputs() -> None:
    T, H, P, N, G = 3, 4, 2, 5, 2
    ssu = {
        "state": torch.zeros(6, H, P, N), "x": torch.zeros(T, H, P), "dt": torch.zeros(T, H, P),
        "A": torch.zeros(H, P, N), "B": torch.zeros(T, G, N), "C": torch.zeros(T, G, N),
    }  # fmt: skip
    V.check_selective_state_update_args(**ssu, out=ssu["x"])
    with pytest.raises(V.ContractError, match="expanded") as info:
        V.check_selective_state_update_args(**ssu, out=torch.zeros(1, H, P).expand(T, H, P))
    assert info.value.arg == "out"
    with pytest.raises(V.ContractError, match="overlaps") as info:
        V.check_selective_state_update_args(**ssu, out=ssu["state"][:T, :, :, 0])
    assert info.value.arg == "state"


def _ssd_args(T: int = 9, Tv: int = 9) -> dict[str, Any]:
    H, P, N, G = 4, 2, 3, 2
    qsl = idx(0, 4, Tv)
    cu, last, seq_idx = compute_chunk_metadata(qsl, torch.tensor([0, 3]), 4)
    return {
        "x": torch.zeros(T, H, P), "dt": torch.zeros(T, H), "A": torch.zeros(H),
        "B": torch.zeros(T, G, N), "C": torch.zeros(T, G, N), "chunk_size": 4,
        "cu_seqlens": qsl, "cu_chunk_seqlens": cu, "last_chunk_indices": last,
        "seq_idx": seq_idx, "out": torch.zeros(T, H, P),
    }  # fmt: skip


def test_ssd_final_states_out() -> None:
    good = _ssd_args()
    pool = torch.zeros(5, 4, 2, 3)
    V.check_ssd_varlen_args(**good, final_states_out=pool, final_state_indices=idx(3, -1))
    V.check_ssd_varlen_args(**good, final_states_out=pool)
    for over, name in (
        ({"final_state_indices": idx(1, 2)}, "final_state_indices"),  # without final_states_out
        ({"final_states_out": pool, "final_state_indices": idx(1, 5)}, "final_state_indices"),
        ({"final_states_out": pool, "final_state_indices": idx(2, 2)}, "final_state_indices"),
        ({"final_states_out": pool, "final_state_indices": idx(1)}, "final_state_indices"),
        ({"final_states_out": pool[:, :, :, :2]}, "final_states_out"),
        ({"final_states_out": pool[:1].expand(5, 4, 2, 3)}, "final_states_out"),
        ({"final_states_out": pool[:1]}, "final_states_out"),  # 1 slot, 2 sequences
        ({"final_states_out": pool, "return_intermediate_states": True}, "final_states_out"),
    ):
        with pytest.raises(V.ContractError) as info:
            V.check_ssd_varlen_args(**{**good, **over})
        assert info.value.arg == name, (over, info.value)


# --------------------------------------------------------------------------------------------
# Offsets: start at 0; a padded tail is legal
# --------------------------------------------------------------------------------------------


def test_padded_tail_is_legal_and_offsets_start_at_zero() -> None:
    V.check_selective_scan_args(**{**_scan_args(), "query_start_loc": idx(0, 2, 5)})
    with pytest.raises(V.ContractError, match="start at 0") as info:
        V.check_selective_scan_args(**{**_scan_args(), "query_start_loc": idx(1, 2, 6)})
    assert info.value.arg == "query_start_loc"
    V.check_ssd_varlen_args(**_ssd_args(T=12, Tv=9))
    q = torch.zeros(1, 6, 2, 4)
    V.check_fused_recurrent_gated_delta_rule_args(
        q, q, torch.zeros(1, 6, 4, 4), torch.zeros(1, 6, 4), None, None, torch.zeros(3, 4, 4, 4),
        True, idx(0, 1, 2, 2, 2), idx(1, 2, -1, -1), None,
    )  # fmt: skip
    V.check_chunk_gated_delta_rule_args(
        q, q, torch.zeros(1, 6, 4, 4), torch.zeros(1, 6, 4), torch.zeros(1, 6, 4), None, None,
        idx(0, 3, 4), None,
    )  # fmt: skip


def test_overlap_classification() -> None:
    buf = torch.zeros(8, 6)
    assert V.overlap(buf[:, :3], buf[:, 3:]) == "none"  # column halves: interleaved, disjoint
    assert V.overlap(buf[:, :3], buf[:, 2:5]) == "partial"
    assert V.overlap(buf[::2], buf[1::2]) == "none"
    assert V.overlap(buf, buf.view(8, 6)) == "same"
    assert V.overlap(buf.t(), buf[:2]) == "partial"
    assert V.overlap(buf, torch.zeros(8, 6)) == "none"
    assert V.overlap(buf[:, 0], buf[:, 1]) == "none"  # unlike layouts judged exactly
    assert V.overlap(buf[:, 0], buf[3]) == "partial"


@pytest.mark.parametrize("n", [5, 5000])  # the host-list path (decode) and the tensor path
def test_offset_value_rules_on_both_paths(n: int) -> None:
    good = torch.arange(n, dtype=torch.int32)
    total = n - 1
    V.check_offsets("op", "cu", good, total, check_values=True, strictly_increasing=True)
    V.check_offsets("op", "cu", good, total + 3, check_values=True)  # padded tail

    def bad(t: torch.Tensor, fragment: str, total: int = total, strict: bool = False) -> None:
        with pytest.raises(V.ContractError, match=fragment) as info:
            V.check_offsets("op", "cu", t, total, check_values=True, strictly_increasing=strict)
        assert (info.value.op, info.value.arg) == ("op", "cu")

    bad(good + 1, "must start at 0", total=n)
    bad(good, r"must lie in \[0, 2\]", total=2)
    dec = good.clone()
    dec[n // 2] = dec[n // 2 - 1] - 1
    bad(dec, "must be non-decreasing")
    flat = good.clone()
    flat[n // 2] = flat[n // 2 - 1]
    V.check_offsets("op", "cu", flat, total, check_values=True)
    bad(flat, "must be strictly increasing", strict=True)
    V.check_offsets("op", "cu", dec, total, check_values=False)  # values not read
