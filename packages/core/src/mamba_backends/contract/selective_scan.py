"""Contract of Mamba1's ``selective_scan_fn`` (varlen and batched prefill)."""

from __future__ import annotations

from torch import Tensor

from mamba_backends.contract.generic import (
    FLOAT_DTYPES,
    check_no_alias,
    check_offsets,
    check_optional_vector,
    check_sequence_slots,
    check_tensor,
    check_writable,
    fail,
    values_enabled,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID


def check_selective_scan_args(
    u: Tensor, ssm_states: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None, delta_bias: Tensor | None = None,
    query_start_loc: Tensor | None = None, cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None, null_block_id: int | None = NULL_BLOCK_ID, *,
    pad_slot_id: int | None = PAD_SLOT_ID, check_values: bool | None = None,
) -> None:  # fmt: skip
    """Varlen: u/delta/z (dim, T), B/C (G, N, T) or (N, T), query_start_loc (B+1,) from 0,
    ending at or before T. Batched: u (B, dim, L), B/C (B, G, N, L) or (B, N, L).
    A (dim, N); ssm_states (slots, dim, N).

    The op writes ``delta`` (and ``z`` when given) in place, and the states: those must be
    writable and share no memory with each other or with the inputs it reads.
    """
    op = "selective_scan_fn"
    varlen = query_start_loc is not None
    check_tensor(op, "u", u, ndim=2 if varlen else 3, dtypes=FLOAT_DTYPES)
    dev = u.device
    check_tensor(op, "delta", delta, shape=tuple(u.shape), dtypes=FLOAT_DTYPES, device=dev)
    if z is not None:
        check_tensor(op, "z", z, shape=tuple(u.shape), dtypes=FLOAT_DTYPES, device=dev)
    dim, L = u.shape[-2], u.shape[-1]
    check_tensor(op, "A", A, shape=(dim, None), dtypes=FLOAT_DTYPES, device=dev)
    N = A.shape[1]
    lead = () if varlen else (u.shape[0],)
    for name, t in (("B", B), ("C", C)):
        check_tensor(
            op, name, t, ndim=(len(lead) + 2, len(lead) + 3), dtypes=FLOAT_DTYPES, device=dev
        )
        if t.dim() == len(lead) + 2:
            want: tuple[int | None, ...] = (*lead, N, L)
        else:
            want = (*lead, None, N, L)
        check_tensor(op, name, t, shape=want)
    G = B.shape[-3] if B.dim() == len(lead) + 3 else 1
    Gc = C.shape[-3] if C.dim() == len(lead) + 3 else 1
    if Gc != G:
        raise fail(op, "C", f"must have as many groups as B ({G}), got {Gc}")
    if G < 1 or dim % G:
        raise fail(op, "B", f"has {G} groups, which must divide dim={dim}")
    check_optional_vector(op, "D", D, dim, dev)
    check_optional_vector(op, "delta_bias", delta_bias, dim, dev)
    check_tensor(op, "ssm_states", ssm_states, ndim=3, dtypes=FLOAT_DTYPES, device=dev)
    if tuple(ssm_states.shape[1:]) != (dim, N):
        raise fail(
            op, "ssm_states", f"must have shape (slots, {dim}, {N}), got {tuple(ssm_states.shape)}"
        )
    reads: dict[str, Tensor | None] = {
        "u": u,
        "A": A,
        "B": B,
        "C": C,
        "D": D,
        "delta_bias": delta_bias,
    }
    written: dict[str, Tensor | None] = {"delta": delta, "z": z, "ssm_states": ssm_states}
    for name, w in written.items():
        if w is None:
            continue
        check_writable(op, name, w)
        others = {**reads, **{k: v for k, v in written.items() if k != name}}
        check_no_alias(op, name, w, others)
    values = values_enabled(check_values, query_start_loc, cache_indices, has_initial_state)
    if varlen:
        assert query_start_loc is not None
        check_tensor(op, "query_start_loc", query_start_loc, device=dev)
        check_offsets(op, "query_start_loc", query_start_loc, L, check_values=values)
        batch = query_start_loc.shape[0] - 1
    else:
        batch = u.shape[0]
    check_sequence_slots(
        op,
        "ssm_states",
        ssm_states.shape[0],
        batch,
        cache_indices,
        has_initial_state,
        dev,
        pad_slot_id=pad_slot_id,
        null_block_id=null_block_id,
        check_values=values,
    )
