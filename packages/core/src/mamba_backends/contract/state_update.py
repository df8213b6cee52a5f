"""Contract of ``selective_state_update`` (decode; Mamba1 and Mamba2 heads form)."""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract.generic import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_no_aliases,
    check_offsets,
    check_slot_indices,
    check_tensor,
    check_writable,
    fail,
    values_enabled,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID


def check_selective_state_update_args(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, dt_bias: Tensor | None = None, z: Tensor | None = None,
    state_batch_indices: Tensor | None = None, dst_state_batch_indices: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID, out: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None, cu_seqlens: Tensor | None = None, *,
    pad_slot_id: int | None = PAD_SLOT_ID, check_values: bool | None = None,
) -> None:  # fmt: skip
    """Heads form: state (slots, H, P, N), x/dt/z/out (T, H, P), A (H, P, N), B/C (T, G, N),
    D/dt_bias (H, P). Mamba1 form drops the H axis (state (slots, dim, N), x (T, dim), A (dim, N),
    B/C (T, N), D/dt_bias (dim,)). T is the batch, or the packed tokens with cu_seqlens
    (from 0, ending at or before T).

    ``state`` and ``out`` are written: both must be writable; ``out`` may be ``x`` or ``z``
    itself but may not overlap an input otherwise, and the state shares memory with nothing.
    """
    op = "selective_state_update"
    check_tensor(op, "state", state, ndim=(3, 4), dtypes=FLOAT_DTYPES)
    dev = state.device
    heads = state.dim() == 4
    st = state if heads else state.unsqueeze(1)
    _, H, P, N = st.shape
    check_writable(op, "state", state)
    check_tensor(op, "x", x, ndim=3 if heads else 2, dtypes=FLOAT_DTYPES, device=dev)
    T = x.shape[0]
    xs = (T, H, P) if heads else (T, P)
    check_tensor(op, "x", x, shape=xs)
    check_tensor(op, "dt", dt, shape=xs, dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "A", A, shape=(H, P, N) if heads else (P, N), dtypes=FLOAT_DTYPES, device=dev)
    for name, t in (("B", B), ("C", C)):
        check_tensor(op, name, t, ndim=3 if heads else 2, dtypes=FLOAT_DTYPES, device=dev)
    G = B.shape[1] if heads else 1
    check_tensor(op, "B", B, shape=(T, G, N) if heads else (T, N))
    check_tensor(op, "C", C, shape=tuple(B.shape))
    if H % G:
        raise fail(op, "B", f"has {G} groups, which must divide the {H} heads")
    hp = (H, P) if heads else (P,)
    for name, v in (("D", D), ("dt_bias", dt_bias)):
        if v is not None:
            check_tensor(op, name, v, shape=hp, dtypes=FLOAT_DTYPES, device=dev)
    for name, v in (("z", z), ("out", out)):
        if v is not None:
            check_tensor(op, name, v, shape=xs, dtypes=FLOAT_DTYPES, device=dev)
    if out is not None:
        check_writable(op, "out", out)
    reads = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias, "z": z}
    check_no_aliases(op, {"state": state, "out": out}, reads, allow_same={"out": ("x", "z")})
    values = values_enabled(
        check_values, state_batch_indices, dst_state_batch_indices, num_accepted_tokens, cu_seqlens
    )
    if cu_seqlens is not None:
        check_tensor(op, "cu_seqlens", cu_seqlens, device=dev)
        check_offsets(op, "cu_seqlens", cu_seqlens, T, check_values=values)
        nseq = cu_seqlens.shape[0] - 1
    else:
        nseq = T
    num_slots = st.shape[0]
    spec = num_accepted_tokens is not None
    if spec and state_batch_indices is None:
        raise fail(op, "state_batch_indices", "is required with num_accepted_tokens")
    for name, idx in (
        ("state_batch_indices", state_batch_indices),
        ("dst_state_batch_indices", dst_state_batch_indices),
    ):
        if idx is None:
            continue
        check_tensor(op, name, idx, ndim=(1, 2), device=dev)
        if idx.shape[0] < nseq:
            raise fail(op, name, f"must have >= {nseq} rows, got {tuple(idx.shape)}")
        writes = name == "dst_state_batch_indices" or dst_state_batch_indices is None
        # The non-spec form reads and writes column 0 only; one slot per request.
        used = idx[:nseq] if spec else (idx[:nseq] if idx.dim() == 1 else idx[:nseq, 0])
        check_slot_indices(
            op, name, used, num_slots, pad_slot_id=pad_slot_id, null_block_id=null_block_id,
            check_values=values, unique=writes and not spec,
        )  # fmt: skip
    if state_batch_indices is None and dst_state_batch_indices is not None:
        raise fail(op, "dst_state_batch_indices", "needs state_batch_indices as well")
    if state_batch_indices is None and num_slots < nseq:
        raise fail(op, "state", f"needs >= {nseq} slots without state_batch_indices")
    if not spec:
        return
    assert num_accepted_tokens is not None and state_batch_indices is not None
    check_tensor(
        op, "num_accepted_tokens", num_accepted_tokens, shape=(nseq,), dtypes=INDEX_DTYPES,
        device=dev,
    )  # fmt: skip
    if not values or not nseq:
        return
    acc = num_accepted_tokens.detach().to("cpu", torch.int64)
    cols = state_batch_indices.shape[1] if state_batch_indices.dim() == 2 else 1
    if bool((acc < 0).any()) or int(acc.max()) > cols:
        raise fail(op, "num_accepted_tokens", f"must lie in [0, {cols}], got {acc.tolist()}")
    if cu_seqlens is not None:
        q = cu_seqlens.detach().to("cpu", torch.int64)
        longest = int((q[1:] - q[:-1]).max())
    else:
        longest = 1
    dst_name = "dst_state_batch_indices" if dst_state_batch_indices is not None else (
        "state_batch_indices"
    )  # fmt: skip
    dst = dst_state_batch_indices if dst_state_batch_indices is not None else state_batch_indices
    dcols = dst.shape[1] if dst.dim() == 2 else 1
    if longest > dcols:
        raise fail(op, dst_name, f"has {dcols} columns but a sequence has {longest} tokens")
