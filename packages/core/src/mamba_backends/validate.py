"""Argument checks shared by every kernel (spec, CPU, GPU), run before any state is written.

Each ``check_<op>_args`` takes the op's arguments under vLLM 0.32's names and raises
``ValueError`` (bad shape, bad value, mismatched device) or ``TypeError`` (bad dtype or type)
whose message names the offending argument. Nothing here computes or writes anything.

Shape checks are free (no device sync). Checks of index *values* (slot ranges, offsets that
must be monotone, chunk metadata that must tile the sequences) read tensors back to the host,
so they run by default only when those tensors already live on the CPU. Pass
``check_values=True`` to force them on an accelerator (they then sync), ``False`` to skip them.

Conventions checked here (see :mod:`mamba_backends.types`):

- a slot index equal to ``pad_slot_id`` (``PAD_SLOT_ID = -1``) or to ``null_block_id``
  (``NULL_BLOCK_ID = 0``; ``None`` disables it) marks a padded request: it is skipped and
  never written. Every other slot index must lie in ``[0, num_slots)``;
- a state tensor is written in place, so it may have any strides except a zero stride on an
  axis longer than one (an ``expand``-ed tensor has no storage of its own per element).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
)  # fmt: skip
INDEX_DTYPES: tuple[torch.dtype, ...] = (torch.int32, torch.int64)
FLAG_DTYPES: tuple[torch.dtype, ...] = (
    torch.bool, torch.int8, torch.uint8, torch.int32, torch.int64,
)  # fmt: skip
ACTIVATIONS = (None, "silu", "swish")


# --------------------------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------------------------


def _fail(op: str, name: str, msg: str) -> ValueError:
    return ValueError(f"{op}: argument '{name}' {msg}")


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    shape: Sequence[int | None] | None = None,
    ndim: int | Sequence[int] | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Check one tensor argument; ``None`` entries of ``shape`` match any size."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise _fail(
                op,
                name,
                f"must have {' or '.join(map(str, allowed))} dims, got shape {tuple(t.shape)}",
            )
    if shape is not None:
        if t.dim() != len(shape) or any(
            s is not None and s != got for s, got in zip(shape, t.shape, strict=True)
        ):
            want = tuple("*" if s is None else s for s in shape)
            raise _fail(op, name, f"must have shape {want}, got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: argument '{name}' must have dtype in ({names}), got {t.dtype}")
    if device is not None and t.device != device:
        raise _fail(op, name, f"must be on device {device}, got {t.device}")
    return t


def check_writable_state(op: str, name: str, t: Tensor) -> None:
    """A state updated in place may have any strides, but no zero stride on a real axis."""
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if size > 1 and stride == 0:
            raise _fail(
                op, name, f"is written in place and must not be expanded (strides {t.stride()})"
            )


def normalize_activation(op: str, activation: object) -> str | None:
    """vLLM accepts ``None``/``False``, ``True`` (= "silu"), ``"silu"`` and ``"swish"``."""
    if activation is True:
        return "silu"
    if activation is False or activation is None:
        return None
    if activation in ("silu", "swish"):
        return "silu"
    raise _fail(op, "activation", f"must be None, True, 'silu' or 'swish', got {activation!r}")


def _want_values(check_values: bool | None, *tensors: Tensor | None) -> bool:
    if check_values is not None:
        return check_values
    return all(t is None or t.device.type == "cpu" for t in tensors)


def check_offsets(
    op: str,
    name: str,
    offsets: Tensor,
    total: int,
    *,
    check_values: bool,
    start_at_zero: bool = False,
    strictly_increasing: bool = False,
) -> None:
    """``offsets`` is a 1-D int tensor of non-decreasing token offsets within ``[0, total]``."""
    check_tensor(op, name, offsets, ndim=1, dtypes=INDEX_DTYPES)
    if offsets.numel() < 1:
        raise _fail(op, name, "must hold at least one offset")
    if not check_values:
        return
    v = offsets.detach().to("cpu", torch.int64)
    if start_at_zero and int(v[0]) != 0:
        raise _fail(op, name, f"must start at 0, got {int(v[0])}")
    if int(v[0]) < 0 or int(v[-1]) > total:
        raise _fail(op, name, f"values must lie in [0, {total}], got {v.tolist()}")
    d = v[1:] - v[:-1]
    if bool((d < 0).any()) or (strictly_increasing and bool((d == 0).any())):
        kind = "strictly increasing" if strictly_increasing else "non-decreasing"
        raise _fail(op, name, f"must be {kind}, got {v.tolist()}")


def check_slot_indices(
    op: str,
    name: str,
    indices: Tensor,
    num_slots: int,
    *,
    pad_slot_id: int | None,
    null_block_id: int | None,
    check_values: bool,
    unique: bool = False,
) -> None:
    """Every slot index is pad/null (skipped) or lies in ``[0, num_slots)``.

    With ``unique``, no two entries may write the same real slot.
    """
    check_tensor(op, name, indices, dtypes=INDEX_DTYPES)
    n = indices.numel()
    if not check_values or n == 0:
        return
    v = indices.detach().reshape(-1)
    if n <= _SMALL_INDEX_COUNT:
        # Decode batches: a host list and a set cost microseconds, torch ops tens of them.
        _check_slots_small(op, name, v.tolist(), num_slots, pad_slot_id, null_block_id, unique)
        return
    v = v.to("cpu", torch.int64)
    lo, hi = int(v.min()), int(v.max())
    skip = [s for s in (pad_slot_id, null_block_id) if s is not None]
    if lo >= 0 and hi < num_slots and not unique:
        return  # every entry is a real slot (pad/null ids lie in range or never occur)
    real = v
    for s in skip:
        real = real[real != s]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= num_slots):
        bad = real[(real < 0) | (real >= num_slots)]
        raise _fail(op, name, _range_msg(int(bad[0]), num_slots, pad_slot_id, null_block_id))
    if unique and real.numel() > 1:
        srt = torch.sort(real).values
        if bool((srt[1:] == srt[:-1]).any()):
            raise _fail(op, name, f"writes the same slot twice: {v.tolist()}")


_SMALL_INDEX_COUNT = 4096


def _range_msg(slot: int, num_slots: int, pad: int | None, null: int | None) -> str:
    return f"holds slot {slot} outside [0, {num_slots}) (pad_slot_id={pad}, null_block_id={null})"


def _check_slots_small(
    op: str,
    name: str,
    vals: list[int],
    num_slots: int,
    pad_slot_id: int | None,
    null_block_id: int | None,
    unique: bool,
) -> None:
    """:func:`check_slot_indices` on a host list (pad/null entries are skipped)."""
    if min(vals) >= 0 and max(vals) < num_slots and not unique:
        return
    real = [s for s in vals if s != pad_slot_id and s != null_block_id]
    for s in real:
        if s < 0 or s >= num_slots:
            raise _fail(op, name, _range_msg(s, num_slots, pad_slot_id, null_block_id))
    if unique and len(set(real)) != len(real):
        raise _fail(op, name, f"writes the same slot twice: {vals}")


def check_optional_vector(
    op: str, name: str, t: Tensor | None, size: int, device: torch.device
) -> None:
    if t is not None:
        check_tensor(op, name, t, shape=(size,), dtypes=FLOAT_DTYPES, device=device)


def check_not_supported(op: str, **args: object) -> None:
    """Raise ``NotImplementedError`` naming the first argument that is set (not None)."""
    for name, value in args.items():
        if value is not None:
            raise NotImplementedError(f"{op}: argument '{name}' is not supported by this kernel")


# --------------------------------------------------------------------------------------------
# causal conv1d
# --------------------------------------------------------------------------------------------


def _check_conv_weights_and_state(
    op: str, dim: int, weight: Tensor, bias: Tensor | None, state_name: str, state: Tensor,
    dev: torch.device,
) -> int:  # fmt: skip
    """weight (dim, W >= 2), bias (dim,), state (slots, dim, >= W-1) writable; returns W."""
    check_tensor(op, "weight", weight, shape=(dim, None), dtypes=FLOAT_DTYPES, device=dev)
    width = weight.shape[1]
    if width < 2:
        raise _fail(op, "weight", f"width must be >= 2, got {width}")
    check_optional_vector(op, "bias", bias, dim, dev)
    check_tensor(op, state_name, state, ndim=3, dtypes=FLOAT_DTYPES, device=dev)
    if state.shape[1] != dim or state.shape[2] < width - 1:
        want = f"(slots, {dim}, >= {width - 1})"
        raise _fail(op, state_name, f"must have shape {want}, got {tuple(state.shape)}")
    check_writable_state(op, state_name, state)
    return width


def check_causal_conv1d_fn_args(
    x: Tensor, weight: Tensor, bias: Tensor | None, conv_states: Tensor,
    query_start_loc: Tensor, cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None, activation: object = "silu",
    pad_slot_id: int | None = PAD_SLOT_ID, null_block_id: int | None = NULL_BLOCK_ID, *,
    check_values: bool | None = None,
) -> None:  # fmt: skip
    """x (dim, T); weight (dim, W); conv_states (slots, dim, >= W-1); query_start_loc (B+1,)."""
    op = "causal_conv1d_fn"
    check_tensor(op, "x", x, ndim=2, dtypes=FLOAT_DTYPES)
    dim, total = x.shape
    dev = x.device
    _check_conv_weights_and_state(op, dim, weight, bias, "conv_states", conv_states, dev)
    normalize_activation(op, activation)
    values = _want_values(check_values, query_start_loc, cache_indices, has_initial_state)
    check_tensor(op, "query_start_loc", query_start_loc, device=dev)
    check_offsets(op, "query_start_loc", query_start_loc, total, check_values=values)
    batch = query_start_loc.shape[0] - 1
    num_slots = conv_states.shape[0]
    if cache_indices is not None:
        check_tensor(op, "cache_indices", cache_indices, shape=(batch,), device=dev)
        check_slot_indices(
            op, "cache_indices", cache_indices, num_slots, pad_slot_id=pad_slot_id,
            null_block_id=null_block_id, check_values=values, unique=True,
        )  # fmt: skip
    elif num_slots < batch:
        raise _fail(op, "conv_states", f"needs >= {batch} slots without cache_indices")
    if has_initial_state is not None:
        check_tensor(
            op, "has_initial_state", has_initial_state, shape=(batch,), dtypes=FLAG_DTYPES,
            device=dev,
        )  # fmt: skip


def check_causal_conv1d_update_args(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
    activation: object = None, conv_state_indices: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None, query_start_loc: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID, out: Tensor | None = None, *,
    pad_slot_id: int | None = PAD_SLOT_ID, check_values: bool | None = None,
) -> None:  # fmt: skip
    """x (B, dim) | (B, dim, S) | varlen (T, dim) with query_start_loc (B+1,);
    conv_state (slots, dim, state_len >= W-1 [+ S-1 with num_accepted_tokens])."""
    op = "causal_conv1d_update"
    check_tensor(op, "x", x, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    dev = x.device
    varlen = query_start_loc is not None
    if varlen and x.dim() != 2:
        raise _fail(
            op, "x", f"must be (num_tokens, dim) with query_start_loc, got {tuple(x.shape)}"
        )
    dim = x.shape[1]
    width = _check_conv_weights_and_state(op, dim, weight, bias, "conv_state", conv_state, dev)
    normalize_activation(op, activation)
    if out is not None:
        check_tensor(op, "out", out, shape=tuple(x.shape), dtypes=(x.dtype,), device=dev)
    values = _want_values(check_values, conv_state_indices, num_accepted_tokens, query_start_loc)
    num_slots, state_len = conv_state.shape[0], conv_state.shape[2]
    if varlen:
        assert query_start_loc is not None
        if conv_state_indices is None:
            raise _fail(op, "conv_state_indices", "is required with query_start_loc")
        check_tensor(op, "query_start_loc", query_start_loc, device=dev)
        check_offsets(op, "query_start_loc", query_start_loc, x.shape[0], check_values=values)
        batch = query_start_loc.shape[0] - 1
    else:
        batch = x.shape[0]
    if conv_state_indices is not None:
        check_tensor(op, "conv_state_indices", conv_state_indices, ndim=(1, 2), device=dev)
        if conv_state_indices.shape[0] != batch:
            raise _fail(
                op,
                "conv_state_indices",
                f"must have {batch} rows, got {tuple(conv_state_indices.shape)}",
            )
        # Only column 0 is a request's slot (a 2-D tensor carries spec-decode blocks beside it).
        col0 = conv_state_indices if conv_state_indices.dim() == 1 else conv_state_indices[:, 0]
        check_slot_indices(
            op, "conv_state_indices", col0, num_slots, pad_slot_id=pad_slot_id,
            null_block_id=null_block_id, check_values=values, unique=True,
        )  # fmt: skip
    elif num_slots < batch:
        raise _fail(op, "conv_state", f"needs >= {batch} slots without conv_state_indices")
    if num_accepted_tokens is not None:
        check_tensor(
            op, "num_accepted_tokens", num_accepted_tokens, shape=(batch,), dtypes=INDEX_DTYPES,
            device=dev,
        )  # fmt: skip
        if values:
            acc = num_accepted_tokens.detach().to("cpu", torch.int64)
            if varlen:
                assert query_start_loc is not None
                q = query_start_loc.detach().to("cpu", torch.int64)
                seqlens = q[1:] - q[:-1]
            else:
                seqlens = torch.full((batch,), 1 if x.dim() == 2 else x.shape[2])
            if batch and bool((acc < 1).any()):
                raise _fail(op, "num_accepted_tokens", f"must be >= 1, got {acc.tolist()}")
            need = torch.maximum(acc - 1 + width - 1, width - 2 + seqlens)
            if batch and int(need.max()) > state_len:
                raise _fail(
                    op,
                    "conv_state",
                    f"has {state_len} columns; num_accepted_tokens="
                    f"{acc.tolist()} and query lengths {seqlens.tolist()} need {int(need.max())}",
                )


# --------------------------------------------------------------------------------------------
# Mamba1 selective scan
# --------------------------------------------------------------------------------------------


def check_selective_scan_args(
    u: Tensor, ssm_states: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None, delta_bias: Tensor | None = None,
    query_start_loc: Tensor | None = None, cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None, null_block_id: int | None = NULL_BLOCK_ID, *,
    pad_slot_id: int | None = PAD_SLOT_ID, check_values: bool | None = None,
) -> None:  # fmt: skip
    """Varlen: u/delta/z (dim, T), B/C (G, N, T) or (N, T). Batched: u (B, dim, L),
    B/C (B, G, N, L) or (B, N, L). A (dim, N); ssm_states (slots, dim, N)."""
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
        raise _fail(op, "C", f"must have as many groups as B ({G}), got {Gc}")
    if G < 1 or dim % G:
        raise _fail(op, "B", f"has {G} groups, which must divide dim={dim}")
    check_optional_vector(op, "D", D, dim, dev)
    check_optional_vector(op, "delta_bias", delta_bias, dim, dev)
    check_tensor(op, "ssm_states", ssm_states, ndim=3, dtypes=FLOAT_DTYPES, device=dev)
    if tuple(ssm_states.shape[1:]) != (dim, N):
        raise _fail(
            op, "ssm_states", f"must have shape (slots, {dim}, {N}), got {tuple(ssm_states.shape)}"
        )
    check_writable_state(op, "ssm_states", ssm_states)
    values = _want_values(check_values, query_start_loc, cache_indices, has_initial_state)
    if varlen:
        assert query_start_loc is not None
        check_tensor(op, "query_start_loc", query_start_loc, device=dev)
        check_offsets(op, "query_start_loc", query_start_loc, L, check_values=values)
        batch = query_start_loc.shape[0] - 1
    else:
        batch = u.shape[0]
    num_slots = ssm_states.shape[0]
    if cache_indices is not None:
        check_tensor(op, "cache_indices", cache_indices, shape=(batch,), device=dev)
        check_slot_indices(
            op, "cache_indices", cache_indices, num_slots, pad_slot_id=pad_slot_id,
            null_block_id=null_block_id, check_values=values, unique=True,
        )  # fmt: skip
    elif num_slots < batch:
        raise _fail(op, "ssm_states", f"needs >= {batch} slots without cache_indices")
    if has_initial_state is not None:
        check_tensor(
            op, "has_initial_state", has_initial_state, shape=(batch,), dtypes=FLAG_DTYPES,
            device=dev,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# selective state update (decode)
# --------------------------------------------------------------------------------------------


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
    B/C (T, N), D/dt_bias (dim,)). T is the batch, or the packed tokens with cu_seqlens."""
    op = "selective_state_update"
    check_tensor(op, "state", state, ndim=(3, 4), dtypes=FLOAT_DTYPES)
    dev = state.device
    heads = state.dim() == 4
    st = state if heads else state.unsqueeze(1)
    _, H, P, N = st.shape
    check_writable_state(op, "state", state)
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
        raise _fail(op, "B", f"has {G} groups, which must divide the {H} heads")
    hp = (H, P) if heads else (P,)
    for name, v in (("D", D), ("dt_bias", dt_bias)):
        if v is not None:
            check_tensor(op, name, v, shape=hp, dtypes=FLOAT_DTYPES, device=dev)
    for name, v in (("z", z), ("out", out)):
        if v is not None:
            check_tensor(op, name, v, shape=xs, dtypes=FLOAT_DTYPES, device=dev)
    if out is not None:
        check_writable_state(op, "out", out)
    values = _want_values(
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
        raise _fail(op, "state_batch_indices", "is required with num_accepted_tokens")
    for name, idx in (
        ("state_batch_indices", state_batch_indices),
        ("dst_state_batch_indices", dst_state_batch_indices),
    ):
        if idx is None:
            continue
        check_tensor(op, name, idx, ndim=(1, 2), device=dev)
        if idx.shape[0] < nseq:
            raise _fail(op, name, f"must have >= {nseq} rows, got {tuple(idx.shape)}")
        writes = name == "dst_state_batch_indices" or dst_state_batch_indices is None
        # The non-spec form reads and writes column 0 only; one slot per request.
        used = idx[:nseq] if spec else (idx[:nseq] if idx.dim() == 1 else idx[:nseq, 0])
        check_slot_indices(
            op, name, used, num_slots, pad_slot_id=pad_slot_id, null_block_id=null_block_id,
            check_values=values, unique=writes and not spec,
        )  # fmt: skip
    if state_batch_indices is None and dst_state_batch_indices is not None:
        raise _fail(op, "dst_state_batch_indices", "needs state_batch_indices as well")
    if state_batch_indices is None and num_slots < nseq:
        raise _fail(op, "state", f"needs >= {nseq} slots without state_batch_indices")
    if spec:
        assert num_accepted_tokens is not None and state_batch_indices is not None
        check_tensor(
            op, "num_accepted_tokens", num_accepted_tokens, shape=(nseq,), dtypes=INDEX_DTYPES,
            device=dev,
        )  # fmt: skip
        if values and nseq:
            acc = num_accepted_tokens.detach().to("cpu", torch.int64)
            cols = state_batch_indices.shape[1] if state_batch_indices.dim() == 2 else 1
            if bool((acc < 0).any()) or int(acc.max()) > cols:
                raise _fail(
                    op, "num_accepted_tokens", f"must lie in [0, {cols}], got {acc.tolist()}"
                )
            if cu_seqlens is not None:
                q = cu_seqlens.detach().to("cpu", torch.int64)
                longest = int((q[1:] - q[:-1]).max())
            else:
                longest = 1
            dst = (
                dst_state_batch_indices
                if dst_state_batch_indices is not None
                else state_batch_indices
            )
            dcols = dst.shape[1] if dst.dim() == 2 else 1
            if longest > dcols:
                name = (
                    "dst_state_batch_indices"
                    if dst_state_batch_indices is not None
                    else "state_batch_indices"
                )
                raise _fail(op, name, f"has {dcols} columns but a sequence has {longest} tokens")


# --------------------------------------------------------------------------------------------
# Mamba2 SSD (varlen prefill)
# --------------------------------------------------------------------------------------------


def check_ssd_varlen_args(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, cu_seqlens: Tensor,
    cu_chunk_seqlens: Tensor, last_chunk_indices: Tensor, seq_idx: Tensor, out: Tensor,
    D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None, dt_limit: tuple[float, float] = (0.0, float("inf")),
    state_dtype: torch.dtype | None = None, *, check_values: bool | None = None,
) -> None:  # fmt: skip
    """x/z/out (T, H, P); dt (T, H); A (H,); B/C (T, G, N); D (H, P) or (H,); dt_bias (H,);
    initial_states (batch, H, P, N); cu_seqlens (batch+1,); cu_chunk_seqlens (nchunks+1,);
    last_chunk_indices (batch,); seq_idx (nchunks,)."""
    op = "mamba_chunk_scan_combined_varlen"
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
        raise _fail(op, "B", f"has {G} groups, which must divide the {H} heads")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise _fail(op, "chunk_size", f"must be a positive int, got {chunk_size!r}")
    check_tensor(op, "out", out, shape=(T, H, P), dtypes=FLOAT_DTYPES, device=dev)
    check_writable_state(op, "out", out)
    if D is not None:
        check_tensor(op, "D", D, ndim=(1, 2), dtypes=FLOAT_DTYPES, device=dev)
        if tuple(D.shape) not in ((H,), (H, P)):
            raise _fail(op, "D", f"must have shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor(op, "z", z, shape=(T, H, P), dtypes=FLOAT_DTYPES, device=dev)
    check_optional_vector(op, "dt_bias", dt_bias, H, dev)
    if (
        not isinstance(dt_limit, (tuple, list))
        or len(dt_limit) != 2
        or not float(dt_limit[0]) <= float(dt_limit[1])
    ):
        raise _fail(
            op, "dt_limit", f"must be a (low, high) pair with low <= high, got {dt_limit!r}"
        )
    if state_dtype is not None and state_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: argument 'state_dtype' must be a float dtype, got {state_dtype!r}")
    check_tensor(op, "cu_seqlens", cu_seqlens, device=dev)
    batch = cu_seqlens.shape[0] - 1 if cu_seqlens.dim() == 1 else -1
    if initial_states is not None:
        check_tensor(
            op, "initial_states", initial_states, shape=(batch, H, P, N), dtypes=FLOAT_DTYPES,
            device=dev,
        )  # fmt: skip
    for name, t in (
        ("cu_chunk_seqlens", cu_chunk_seqlens),
        ("last_chunk_indices", last_chunk_indices),
        ("seq_idx", seq_idx),
    ):
        check_tensor(op, name, t, ndim=1, dtypes=INDEX_DTYPES, device=dev)
    values = _want_values(check_values, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx)
    check_offsets(op, "cu_seqlens", cu_seqlens, T, check_values=values, strictly_increasing=True)
    check_offsets(
        op, "cu_chunk_seqlens", cu_chunk_seqlens, T, check_values=values, strictly_increasing=True
    )
    nchunks = cu_chunk_seqlens.shape[0] - 1
    if seq_idx.shape != (nchunks,):
        raise _fail(op, "seq_idx", f"must have shape ({nchunks},), got {tuple(seq_idx.shape)}")
    if last_chunk_indices.shape != (batch,):
        raise _fail(
            op,
            "last_chunk_indices",
            f"must have shape ({batch},), got {tuple(last_chunk_indices.shape)}",
        )
    if not values:
        return
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    cc = cu_chunk_seqlens.detach().to("cpu", torch.int64)
    si = seq_idx.detach().to("cpu", torch.int64)
    last = last_chunk_indices.detach().to("cpu", torch.int64)
    if bool(((cc[1:] - cc[:-1]) > chunk_size).any()):
        raise _fail(op, "cu_chunk_seqlens", f"has a chunk longer than chunk_size={chunk_size}")
    if nchunks and (bool((si < 0).any()) or bool((si >= batch).any())):
        raise _fail(op, "seq_idx", f"values must lie in [0, {batch}), got {si.tolist()}")
    # Every chunk lies inside its sequence, and the chunks tile each sequence exactly.
    if nchunks and (bool((cc[:-1] < cu[si]).any()) or bool((cc[1:] > cu[si + 1]).any())):
        raise _fail(op, "seq_idx", "names a sequence that does not contain its chunk")
    if batch and (bool((last < 0).any()) or bool((last >= nchunks).any())):
        raise _fail(
            op, "last_chunk_indices", f"values must lie in [0, {nchunks}), got {last.tolist()}"
        )
    if batch and (
        bool((si[last] != torch.arange(batch)).any()) or bool((cc[last + 1] != cu[1:]).any())
    ):
        raise _fail(op, "last_chunk_indices", "must name the chunk that ends each sequence")
    if batch and (int(cc[0]) != int(cu[0]) or nchunks != int(last[-1]) + 1):
        raise _fail(op, "cu_chunk_seqlens", "must tile the tokens of cu_seqlens exactly")
    first = torch.cat([torch.zeros(1, dtype=torch.int64), last[:-1] + 1])
    if batch and bool((cc[first] != cu[:-1]).any()):
        raise _fail(op, "cu_chunk_seqlens", "must start a chunk where each sequence starts")
