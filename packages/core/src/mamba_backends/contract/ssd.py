"""Contract of Mamba2's ``mamba_chunk_scan_combined_varlen`` (SSD, varlen prefill)."""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract.generic import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_no_alias,
    check_offsets,
    check_optional_vector,
    check_positive_int,
    check_slot_indices,
    check_tensor,
    check_writable,
    fail,
    values_enabled,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

OP = "mamba_chunk_scan_combined_varlen"


def check_ssd_varlen_args(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, cu_seqlens: Tensor,
    cu_chunk_seqlens: Tensor, last_chunk_indices: Tensor, seq_idx: Tensor, out: Tensor,
    D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None, dt_limit: tuple[float, float] = (0.0, float("inf")),
    state_dtype: torch.dtype | None = None, return_intermediate_states: bool = False,
    final_states_out: Tensor | None = None, final_state_indices: Tensor | None = None, *,
    check_values: bool | None = None,
) -> None:  # fmt: skip
    """x/z/out (T, H, P); dt (T, H); A (H,); B/C (T, G, N); D (H, P) or (H,); dt_bias (H,);
    initial_states (batch, H, P, N); cu_seqlens (batch+1,) from 0, strictly increasing, ending
    at or before T; cu_chunk_seqlens (nchunks+1,) tiling the same tokens; last_chunk_indices
    (batch,); seq_idx (nchunks,) non-decreasing; final_states_out (slots, H, P, N) with
    final_state_indices (batch,) (vLLM 0.33).

    ``out`` is written (it may be ``x`` or ``z`` itself, but may not overlap an input
    otherwise); so is ``final_states_out``, which shares memory with nothing else.
    """
    op = OP
    check_tensor(op, "x", x, ndim=3, dtypes=FLOAT_DTYPES)
    dev = x.device
    T, H, P = x.shape
    check_tensor(op, "dt", dt, shape=(T, H), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "A", A, shape=(H,), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "B", B, ndim=3, dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "B", B, shape=(T, None, None))
    G, N = B.shape[1], B.shape[2]
    check_tensor(op, "C", C, shape=(T, G, N), dtypes=FLOAT_DTYPES, device=dev)
    if G < 1 or H % G:
        raise fail(op, "B", f"has {G} groups, which must divide the {H} heads")
    check_positive_int(op, "chunk_size", chunk_size)
    check_tensor(op, "out", out, shape=(T, H, P), dtypes=FLOAT_DTYPES, device=dev)
    check_writable(op, "out", out)
    if D is not None:
        check_tensor(op, "D", D, ndim=(1, 2), dtypes=FLOAT_DTYPES, device=dev)
        if tuple(D.shape) not in ((H,), (H, P)):
            raise fail(op, "D", f"must have shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor(op, "z", z, shape=(T, H, P), dtypes=FLOAT_DTYPES, device=dev)
    check_optional_vector(op, "dt_bias", dt_bias, H, dev)
    if (
        not isinstance(dt_limit, (tuple, list))
        or len(dt_limit) != 2
        or not float(dt_limit[0]) <= float(dt_limit[1])
    ):
        raise fail(op, "dt_limit", f"must be a (low, high) pair with low <= high, got {dt_limit!r}")
    if state_dtype is not None and state_dtype not in FLOAT_DTYPES:
        raise fail(op, "state_dtype", f"must be a float dtype, got {state_dtype!r}")
    check_tensor(op, "cu_seqlens", cu_seqlens, device=dev)
    batch = cu_seqlens.shape[0] - 1 if cu_seqlens.dim() == 1 else -1
    if initial_states is not None:
        check_tensor(
            op, "initial_states", initial_states, shape=(batch, H, P, N), dtypes=FLOAT_DTYPES,
            device=dev,
        )  # fmt: skip
    reads = {
        "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
        "initial_states": initial_states,
    }  # fmt: skip
    check_no_alias(op, "out", out, reads, allow_same=("x", "z"))
    _check_final_states_out(
        final_states_out, final_state_indices, return_intermediate_states, batch, (H, P, N),
        reads, out, dev, check_values,
    )  # fmt: skip
    for name, t in (
        ("cu_chunk_seqlens", cu_chunk_seqlens),
        ("last_chunk_indices", last_chunk_indices),
        ("seq_idx", seq_idx),
    ):
        check_tensor(op, name, t, ndim=1, dtypes=INDEX_DTYPES, device=dev)
    values = values_enabled(check_values, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx)
    check_offsets(op, "cu_seqlens", cu_seqlens, T, check_values=values, strictly_increasing=True)
    check_offsets(
        op, "cu_chunk_seqlens", cu_chunk_seqlens, T, check_values=values, strictly_increasing=True
    )
    nchunks = cu_chunk_seqlens.shape[0] - 1
    if seq_idx.shape != (nchunks,):
        raise fail(op, "seq_idx", f"must have shape ({nchunks},), got {tuple(seq_idx.shape)}")
    if last_chunk_indices.shape != (batch,):
        raise fail(
            op,
            "last_chunk_indices",
            f"must have shape ({batch},), got {tuple(last_chunk_indices.shape)}",
        )
    if values:
        _check_chunk_values(chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx)


def _check_final_states_out(
    final_states_out: Tensor | None, final_state_indices: Tensor | None,
    return_intermediate_states: bool, batch: int, hpn: tuple[int, int, int],
    reads: dict[str, Tensor | None], out: Tensor, dev: torch.device, check_values: bool | None,
) -> None:  # fmt: skip
    """final_states_out (slots, H, P, N) writable; final_state_indices (batch,) into it."""
    op = OP
    if final_states_out is None:
        if final_state_indices is not None:
            raise fail(op, "final_state_indices", "needs final_states_out")
        return
    check_tensor(op, "final_states_out", final_states_out, ndim=4, dtypes=FLOAT_DTYPES, device=dev)
    if tuple(final_states_out.shape[1:]) != hpn:
        H, P, N = hpn
        raise fail(
            op,
            "final_states_out",
            f"must have shape (slots, {H}, {P}, {N}), got {tuple(final_states_out.shape)}",
        )
    check_writable(op, "final_states_out", final_states_out)
    check_no_alias(op, "final_states_out", final_states_out, {**reads, "out": out})
    if return_intermediate_states:
        raise fail(
            op, "final_states_out", "cannot be combined with return_intermediate_states=True"
        )
    num_slots = final_states_out.shape[0]
    if final_state_indices is None:
        if num_slots < batch:
            raise fail(
                op, "final_states_out", f"needs >= {batch} slots without final_state_indices"
            )
        return
    check_tensor(op, "final_state_indices", final_state_indices, shape=(batch,), device=dev)
    check_slot_indices(
        op, "final_state_indices", final_state_indices, num_slots, pad_slot_id=PAD_SLOT_ID,
        null_block_id=NULL_BLOCK_ID, check_values=values_enabled(check_values, final_state_indices),
        unique=True,
    )  # fmt: skip


def _check_chunk_values(
    chunk_size: int, cu_seqlens: Tensor, cu_chunk_seqlens: Tensor, last_chunk_indices: Tensor,
    seq_idx: Tensor,
) -> None:  # fmt: skip
    """The chunks tile the tokens of cu_seqlens exactly, none longer than chunk_size."""
    op = OP
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    cc = cu_chunk_seqlens.detach().to("cpu", torch.int64)
    si = seq_idx.detach().to("cpu", torch.int64)
    last = last_chunk_indices.detach().to("cpu", torch.int64)
    batch, nchunks = cu.numel() - 1, cc.numel() - 1
    if bool(((cc[1:] - cc[:-1]) > chunk_size).any()):
        raise fail(op, "cu_chunk_seqlens", f"has a chunk longer than chunk_size={chunk_size}")
    if nchunks and (bool((si < 0).any()) or bool((si >= batch).any())):
        raise fail(op, "seq_idx", f"values must lie in [0, {batch}), got {si.tolist()}")
    if nchunks > 1 and bool((si[1:] < si[:-1]).any()):
        raise fail(op, "seq_idx", f"must be non-decreasing, got {si.tolist()}")
    # Every chunk lies inside its sequence, and the chunks tile each sequence exactly.
    if nchunks and (bool((cc[:-1] < cu[si]).any()) or bool((cc[1:] > cu[si + 1]).any())):
        raise fail(op, "seq_idx", "names a sequence that does not contain its chunk")
    if batch and (bool((last < 0).any()) or bool((last >= nchunks).any())):
        raise fail(
            op, "last_chunk_indices", f"values must lie in [0, {nchunks}), got {last.tolist()}"
        )
    if batch and (
        bool((si[last] != torch.arange(batch)).any()) or bool((cc[last + 1] != cu[1:]).any())
    ):
        raise fail(op, "last_chunk_indices", "must name the chunk that ends each sequence")
    if (batch and nchunks != int(last[-1]) + 1) or int(cc[-1]) != int(cu[-1]):
        raise fail(op, "cu_chunk_seqlens", "must tile the tokens of cu_seqlens exactly")
    first = torch.cat([torch.zeros(1, dtype=torch.int64), last[:-1] + 1])
    if batch and bool((cc[first] != cu[:-1]).any()):
        raise fail(op, "cu_chunk_seqlens", "must start a chunk where each sequence starts")
