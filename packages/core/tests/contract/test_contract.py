"""Tests of the shared argument contract (mamba_backends.contract)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mamba_backends import contract as V
from mamba_backends.metadata import compute_chunk_metadata


def idx(*values: int) -> Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _conv_fn_args(device: str = "cpu") -> dict:
    dim, W, T = 4, 3, 6
    return {
        "x": torch.zeros(T, dim, device=device).T,
        "weight": torch.zeros(dim, W, device=device),
        "bias": torch.zeros(dim, device=device),
        "conv_states": torch.zeros(5, W - 1, dim, device=device).transpose(1, 2),
        "query_start_loc": torch.tensor([0, 2, 6], dtype=torch.int32, device=device),
        "cache_indices": torch.tensor([3, -1], dtype=torch.int32, device=device),
        "has_initial_state": torch.tensor([True, False], device=device),
    }


def test_conv_fn_accepts_good_args_and_names_bad_ones() -> None:
    V.check_causal_conv1d_fn_args(**_conv_fn_args())
    cases = [
        ({"x": torch.zeros(4, 6, 1)}, ValueError, "'x'"),
        ({"x": torch.zeros(4, 6, dtype=torch.int32)}, TypeError, "'x'"),
        ({"weight": torch.zeros(4, 1)}, ValueError, "'weight'"),
        ({"bias": torch.zeros(5)}, ValueError, "'bias'"),
        ({"conv_states": torch.zeros(5, 4, 1)}, ValueError, "'conv_states'"),
        ({"conv_states": torch.zeros(1, 4, 2).expand(5, 4, 2)}, ValueError, "'conv_states'"),
        ({"query_start_loc": idx(0, 2, 7)}, ValueError, "'query_start_loc'"),
        ({"query_start_loc": idx(0, 4, 2)}, ValueError, "'query_start_loc'"),
        ({"query_start_loc": torch.tensor([0.0, 6.0])}, TypeError, "'query_start_loc'"),
        ({"cache_indices": idx(3)}, ValueError, "'cache_indices'"),
        ({"cache_indices": idx(3, 5)}, ValueError, "'cache_indices'"),
        ({"cache_indices": idx(3, -2)}, ValueError, "'cache_indices'"),
        ({"cache_indices": idx(3, 3)}, ValueError, "'cache_indices'"),
        ({"has_initial_state": torch.tensor([0.5, 1.0])}, TypeError, "'has_initial_state'"),
        ({"activation": "gelu"}, ValueError, "'activation'"),
    ]
    for over, exc, name in cases:
        with pytest.raises(exc, match=name):
            V.check_causal_conv1d_fn_args(**{**_conv_fn_args(), **over})


def test_null_block_and_pad_are_allowed_only_as_configured() -> None:
    args = {**_conv_fn_args(), "cache_indices": idx(0, -1)}
    V.check_causal_conv1d_fn_args(**args)
    with pytest.raises(ValueError, match="cache_indices"):
        V.check_causal_conv1d_fn_args(**args, pad_slot_id=None)


def test_value_checks_skip_off_cpu_and_can_be_forced() -> None:
    # Meta tensors hold no data: a value check would fail, so none may run by default.
    meta = _conv_fn_args("meta")
    meta["cache_indices"] = torch.tensor([99, 98], dtype=torch.int32, device="meta")
    V.check_causal_conv1d_fn_args(**meta)
    with pytest.raises((NotImplementedError, RuntimeError)):
        V.check_causal_conv1d_fn_args(**meta, check_values=True)
    bad = {**_conv_fn_args(), "cache_indices": idx(9, 9)}
    V.check_causal_conv1d_fn_args(**bad, check_values=False)
    with pytest.raises(ValueError, match="cache_indices"):
        V.check_causal_conv1d_fn_args(**bad)


def test_device_mismatch_names_argument() -> None:
    args = _conv_fn_args()
    args["weight"] = args["weight"].to("meta")
    with pytest.raises(ValueError, match="'weight'.*device"):
        V.check_causal_conv1d_fn_args(**args)


def test_conv_update_checks() -> None:
    dim, W = 4, 3
    state = torch.zeros(6, dim, W - 1 + 2)
    w = torch.zeros(dim, W)
    V.check_causal_conv1d_update_args(torch.zeros(2, dim), state, w, conv_state_indices=idx(1, 2))
    x_var = torch.zeros(5, dim)
    V.check_causal_conv1d_update_args(
        x_var, state, w, conv_state_indices=idx(1, 2), query_start_loc=idx(0, 3, 5),
        num_accepted_tokens=idx(2, 1),
    )  # fmt: skip
    with pytest.raises(ValueError, match="conv_state_indices"):
        V.check_causal_conv1d_update_args(x_var, state, w, query_start_loc=idx(0, 3, 5))
    with pytest.raises(ValueError, match="conv_state"):  # 4 tokens need W-2+4 = 5 columns
        V.check_causal_conv1d_update_args(
            x_var, state, w, conv_state_indices=idx(1, 2), query_start_loc=idx(0, 4, 5),
            num_accepted_tokens=idx(1, 1),
        )  # fmt: skip
    with pytest.raises(ValueError, match="num_accepted_tokens"):
        V.check_causal_conv1d_update_args(
            x_var, state, w, conv_state_indices=idx(1, 2), query_start_loc=idx(0, 3, 5),
            num_accepted_tokens=idx(0, 1),
        )  # fmt: skip
    with pytest.raises(ValueError, match="'out'"):
        V.check_causal_conv1d_update_args(torch.zeros(2, dim), state, w, out=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="'out'"):
        V.check_causal_conv1d_update_args(
            torch.zeros(2, dim), state, w, out=torch.zeros(2, dim, dtype=torch.float16)
        )


def test_selective_scan_checks() -> None:
    dim, N, T, G = 4, 3, 5, 2
    good = {
        "u": torch.zeros(dim, T),
        "ssm_states": torch.zeros(3, dim, N),
        "delta": torch.zeros(dim, T),
        "A": torch.zeros(dim, N),
        "B": torch.zeros(G, N, T),
        "C": torch.zeros(G, N, T),
        "query_start_loc": idx(0, 2, 5),
        "cache_indices": idx(1, 2),
    }
    V.check_selective_scan_args(**good)
    V.check_selective_scan_args(**{**good, "B": torch.zeros(N, T), "C": torch.zeros(N, T)})
    for over, name in (
        ({"delta": torch.zeros(dim, T + 1)}, "'delta'"),
        ({"A": torch.zeros(dim + 1, N)}, "'A'"),
        ({"C": torch.zeros(1, N, T)}, "'C'"),
        ({"ssm_states": torch.zeros(3, dim, N + 1)}, "'ssm_states'"),
        ({"D": torch.zeros(dim + 1)}, "'D'"),
        ({"z": torch.zeros(dim, T - 1)}, "'z'"),
        ({"cache_indices": idx(1, 3)}, "'cache_indices'"),
    ):
        with pytest.raises(ValueError, match=name):
            V.check_selective_scan_args(**{**good, **over})


def test_state_update_checks() -> None:
    T, H, P, N, G = 3, 4, 2, 5, 2
    good = {
        "state": torch.zeros(6, H, P, N),
        "x": torch.zeros(T, H, P),
        "dt": torch.zeros(T, H)[:, :, None].expand(T, H, P),
        "A": torch.zeros(H)[:, None, None].expand(H, P, N),
        "B": torch.zeros(T, G, N),
        "C": torch.zeros(T, G, N),
        "state_batch_indices": idx(1, 0, 2),
        "out": torch.zeros(T, H, P),
    }
    V.check_selective_state_update_args(**good)
    spec = {**good, "state_batch_indices": torch.tensor([[1, 2], [3, 4]], dtype=torch.int32),
            "cu_seqlens": idx(0, 2, 3), "num_accepted_tokens": idx(2, 1)}  # fmt: skip
    V.check_selective_state_update_args(**spec)
    for over, name in (
        ({"state": torch.zeros(1, H, P, N).expand(6, H, P, N)}, "'state'"),
        ({"dt": torch.zeros(T, H, P + 1)}, "'dt'"),
        ({"D": torch.zeros(H)}, "'D'"),
        ({"state_batch_indices": idx(1, 0)}, "'state_batch_indices'"),
        ({"dst_state_batch_indices": idx(3, 3, 4)}, "'dst_state_batch_indices'"),
        ({"num_accepted_tokens": idx(1, 1, 1), "state_batch_indices": None}, "state_batch_indices"),
    ):
        with pytest.raises(ValueError, match=name):
            V.check_selective_state_update_args(**{**good, **over})
    with pytest.raises(ValueError, match="num_accepted_tokens"):
        V.check_selective_state_update_args(**{**spec, "num_accepted_tokens": idx(3, 1)})
    with pytest.raises(ValueError, match="state_batch_indices"):  # 3 tokens, 2 columns
        V.check_selective_state_update_args(**{**spec, "cu_seqlens": idx(0, 3, 3)})


def test_ssd_checks() -> None:
    T, H, P, N, G = 9, 4, 2, 3, 2
    qsl = idx(0, 4, 9)
    cu, last, seq_idx = compute_chunk_metadata(qsl, torch.tensor([0, 3]), 4)
    good = {
        "x": torch.zeros(T, H, P), "dt": torch.zeros(T, H), "A": torch.zeros(H),
        "B": torch.zeros(T, G, N), "C": torch.zeros(T, G, N), "chunk_size": 4,
        "cu_seqlens": qsl, "cu_chunk_seqlens": cu, "last_chunk_indices": last,
        "seq_idx": seq_idx, "out": torch.zeros(T, H, P),
    }  # fmt: skip
    V.check_ssd_varlen_args(**good)
    V.check_ssd_varlen_args(**good, D=torch.zeros(H, P), initial_states=torch.zeros(2, H, P, N))
    # A chunk that crosses a sequence boundary, and chunks that do not tile the tokens.
    for over, name in (
        ({"cu_chunk_seqlens": idx(0, 3, 6, 9), "seq_idx": idx(0, 0, 1)}, "seq_idx"),
        ({"cu_seqlens": idx(0, 0, 9)}, "cu_seqlens"),
        ({"seq_idx": seq_idx.flip(0)}, "seq_idx|last_chunk_indices"),
        ({"state_dtype": torch.int32}, "state_dtype"),
        ({"B": torch.zeros(T, 3, N), "C": torch.zeros(T, 3, N)}, "'B'"),
        ({"out": torch.zeros(T, H, P + 1)}, "'out'"),
        ({"z": torch.zeros(T, H, P + 1)}, "'z'"),
    ):
        with pytest.raises((ValueError, TypeError), match=name):
            V.check_ssd_varlen_args(**{**good, **over})


def test_not_supported_names_the_argument() -> None:
    V.check_not_supported("op", a=None, b=None)
    with pytest.raises(NotImplementedError, match="'b'"):
        V.check_not_supported("op", a=None, b=1)
