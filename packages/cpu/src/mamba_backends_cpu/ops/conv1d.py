"""CPU kernels: causal depthwise conv1d, prefill (varlen) and decode.

Both ops keep vLLM 0.32's signatures. The conv state of a request holds the last ``W-1`` inputs
(columns ``[:, :W-1]`` of a ``(dim, state_len)`` slot, ``state_len >= W-1``); it may be any
strided view, e.g. the ``(dim, W-1)`` transpose of a ``(W-1, dim)`` page.

Prefill runs the whole packed batch as one long sequence with ``W`` shifted multiply-adds in
token-major ``(T, dim)`` layout, then recomputes only the first ``W-1`` outputs of every
sequence from its initial state (the only outputs that see a sequence boundary). States are
gathered and written back with advanced indexing, so pad (``-1``) and null (``0``) slots are
never read as inputs nor written; decode forms reuse the prefill path.

Both ops run in one fused C kernel (``_native_conv``) when it is available and the tensors are
fp32/bf16/fp16 with ``W <= 4``: it reads ``x`` and the states in place through their strides,
so nothing above is materialised. The PyTorch code is the fallback (``MAMBA_BACKENDS_CPU_NATIVE=0``,
no compiler, fp64, wider kernels).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_backends.contract import (
    ContractError,
    check_causal_conv1d_fn_args,
    check_causal_conv1d_update_args,
    check_not_supported,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_cpu.native import _build
from mamba_backends_cpu.native import conv as _native_conv
from mamba_backends_cpu.native import entry as _entry
from mamba_backends_cpu.ops._common import compute_dtype, live_slots, silu_name


def _gather_states(conv_states: Tensor, slots: Tensor, K: int, ctype: torch.dtype) -> Tensor:
    """``(B, K, dim)`` states of ``slots`` (already clamped to valid ids) in ``ctype``."""
    return conv_states.transpose(1, 2)[slots, :K, :].to(ctype)


def _write_states(conv_states: Tensor, slots: Tensor, new: Tensor) -> None:
    """Write ``new`` ``(b, K, dim)`` into columns ``[:K]`` of ``conv_states[slots]`` in place."""
    K = new.shape[1]
    view = conv_states.transpose(1, 2)[:, :K, :]
    view.index_put_((slots,), new.to(conv_states.dtype))


def _varlen_conv(
    xT: Tensor, wT: Tensor, bias: Tensor | None, init: Tensor, qsl: Tensor
) -> tuple[Tensor, Tensor]:
    """Causal depthwise conv over packed sequences, token-major.

    Args:
        xT: ``(T, dim)`` inputs in the compute dtype.
        wT: ``(W, dim)`` taps; tap ``W-1`` multiplies the current token.
        bias: ``(dim,)`` or None.
        init: ``(B, W-1, dim)`` initial states (zeros where a sequence has none).
        qsl: ``(B+1,)`` int64 offsets.

    Returns:
        ``out (T, dim)`` before activation, and ``final (B, W-1, dim)`` last ``W-1`` inputs.
    """
    T, dim = xT.shape
    W = wT.shape[0]
    K = W - 1
    Bn = qsl.numel() - 1
    if bias is not None:
        out = torch.addcmul(bias, xT, wT[K])
    else:
        out = xT * wT[K]
    for k in range(K):
        s = K - k
        if s < T:
            out[s:].addcmul_(xT[: T - s], wT[k])
    if K == 0:
        return out, init
    starts = qsl[:-1]
    lens = qsl[1:] - starts
    # ext[b] = [init_b (K rows), first K tokens of b (zero past its end)]
    j = torch.arange(K, dtype=torch.int64)
    tok = starts[:, None] + j[None, :]  # (B, K)
    in_seq = j[None, :] < lens[:, None]
    head_x = xT[tok.clamp(max=max(T - 1, 0))] * in_seq[..., None]
    ext = torch.cat([init, head_x], dim=1)  # (B, 2K, dim)
    # Same operation order as the main body (bias + x*w[K], then taps 0..K-1).
    head = torch.addcmul(bias, ext[:, K:], wT[K]) if bias is not None else ext[:, K:] * wT[K]
    for k in range(K):
        head.addcmul_(ext[:, k : k + K], wT[k])
    rows = tok[in_seq]
    out.index_copy_(0, rows, head[in_seq])
    # final[b, i] = [init_b, x_b][len_b + i]
    pos = lens[:, None] + j[None, :]  # (B, K) position in [init, x]
    from_x = pos >= K
    x_rows = (starts[:, None] + pos - K).clamp(min=0, max=max(T - 1, 0))
    init_rows = pos.clamp(max=K - 1)
    final = torch.where(
        from_x[..., None],
        xT[x_rows] if T > 0 else torch.zeros_like(init),
        torch.gather(init, 1, init_rows[..., None].expand(Bn, K, dim)),
    )
    return out, final


def _like_x(y: Tensor, x: Tensor) -> Tensor:
    """``y`` in the layout of ``torch.empty_like(x)`` (vLLM's result layout), copied if needed."""
    if y.stride() == x.stride() or y.dim() != 2:
        return y
    res = torch.empty_like(x)
    if res.stride() == y.stride():
        return y
    res.copy_(y)
    return res


def _native_lib(weight: Tensor, *tensors: Tensor | None) -> ctypes.CDLL | None:
    """The native conv library when it can run these tensors, else None."""
    if weight.shape[-1] > _native_conv.MAX_WIDTH or not _native_conv.supported(*tensors):
        return None
    return _native_conv.lib()


def _fn_native(
    cdll: ctypes.CDLL,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    conv_states: Tensor,
    qsl: Tensor,
    cache_indices: Tensor | None,
    has_initial_state: Tensor | None,
    use_silu: bool,
    pad_slot_id: int | None,
    null_block_id: int | None,
) -> Tensor:
    """Prefill in the C kernel (arguments checked); returns ``(dim, T)``, channel-last.

    ``qsl``: ``(B+1,)`` int32/int64 offsets. Tensors already in the kernel's form are passed
    as they are: no dispatcher op but the output's allocation in the common case.
    """
    dim, T = x.shape
    x_in = x
    if x.stride(0) != 1 and dim > 1:
        x = x.t().contiguous().t()  # channel-last: the kernel vectorises over channels
    y = torch.empty_strided((dim, T), (1, dim), dtype=x.dtype)  # (T, dim) rows, seen as (dim, T)
    hi = has_initial_state
    if hi is not None and (hi.dtype != torch.bool or hi.dim() != 1 or not hi.is_contiguous()):
        hi = hi.reshape(-1).to(torch.bool).contiguous()
    q = _native_conv._index(qsl)
    if not q.is_contiguous():
        q = q.contiguous()
    slots = None if cache_indices is None else _native_conv._index(cache_indices)
    _native_conv.conv(
        cdll, x, (0, x.stride(1), x.stride(0)), y, (0, dim, 1), weight, bias, conv_states,
        q.numel() - 1, 0, q, slots, hi, 0 if hi is None else 1, use_silu,
        pad_slot_id if cache_indices is not None else None,
        null_block_id if cache_indices is not None else None,
        zero_skipped=True, split=True, mode=0,
    )  # fmt: skip
    return _like_x(y, x_in)


def _update_native(
    cdll: ctypes.CDLL,
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    use_silu: bool,
    conv_state_indices: Tensor | None,
    query_start_loc: Tensor | None,
    null_block_id: int | None,
    out: Tensor | None,
    check_slots: bool,
) -> int:
    """Decode in the C kernel (arguments checked); writes into ``out`` or ``x``. Returns the
    kernel's code: :data:`_build.BADINDEX` when ``check_slots`` found a bad slot (nothing
    written)."""
    res = out if out is not None else x
    qsl = None
    if query_start_loc is not None:
        qsl = _native_conv._index(query_start_loc).contiguous()
        B, L = qsl.numel() - 1, 0
        xs, ys = (0, x.stride(0), x.stride(1)), (0, res.stride(0), res.stride(1))
    elif x.dim() == 2:
        B, L = x.shape[0], 1
        xs, ys = (x.stride(0), 0, x.stride(1)), (res.stride(0), 0, res.stride(1))
    else:
        B, L = x.shape[0], x.shape[2]
        xs = (x.stride(0), x.stride(2), x.stride(1))
        ys = (res.stride(0), res.stride(2), res.stride(1))
    slots = None
    if conv_state_indices is not None:
        ci = conv_state_indices
        slots = _native_conv._index(ci if ci.dim() == 1 else ci[:, 0])
    # Whole requests per thread when there are enough, and always for one token each (the
    # kernel's fused single-token loop); else (request, channel group) items.
    mode = 1 if L == 1 or B >= 4 * torch.get_num_threads() else 0
    return _native_conv.conv(
        cdll, x, xs, res, ys, weight, bias, conv_state, B, L, qsl, slots, None, 2, use_silu,
        PAD_SLOT_ID, null_block_id, zero_skipped=False, split=False, mode=mode,
        check_slots=check_slots,
    )  # fmt: skip


def causal_conv1d_fn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    conv_states: Tensor,
    query_start_loc: Tensor,
    cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None,
    activation: str | None = "silu",
    pad_slot_id: int | None = PAD_SLOT_ID,
    null_block_id: int | None = NULL_BLOCK_ID,
    block_idx_first_scheduled_token: Tensor | None = None,
    block_idx_last_scheduled_token: Tensor | None = None,
    initial_state_idx: Tensor | None = None,
    num_computed_tokens: Tensor | None = None,
    block_size_to_align: int = 0,
    metadata: object = None,
    validate_data: bool = False,
) -> Tensor:
    """Varlen causal depthwise conv1d (prefill) with in-place conv state update.

    Args:
        x: ``(dim, T)`` packed tokens (channel-last ``stride(0) == 1`` is fastest).
        weight: ``(dim, W)``.
        bias: ``(dim,)`` or None.
        conv_states: ``(slots, dim, state_len >= W-1)``, any strides; slot ``cache_indices[b]``
            is read when ``has_initial_state[b]`` and its first ``W-1`` columns are overwritten
            with the last ``W-1`` inputs of sequence ``b``.
        query_start_loc: ``(B+1,)`` token offsets.
        cache_indices: ``(B,)`` slots (identity when None); pad/null entries are skipped.
        has_initial_state: ``(B,)`` bool, or None (no initial states).
        activation: None, ``"silu"``/``"swish"`` or a bool.

    Returns:
        ``(dim, T)`` in ``x.dtype``; tokens of skipped sequences are zero.
    """
    check_not_supported(
        "causal_conv1d_fn",
        block_idx_first_scheduled_token=block_idx_first_scheduled_token,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
        num_computed_tokens=num_computed_tokens,
    )
    check_causal_conv1d_fn_args(
        x, weight, bias, conv_states, query_start_loc, cache_indices, has_initial_state,
        activation, pad_slot_id, null_block_id,
    )  # fmt: skip
    use_silu = silu_name(activation)
    dim, T = x.shape
    K = weight.shape[1] - 1
    Bn = query_start_loc.numel() - 1
    # tolist(), not int(qsl[-1]): no dispatcher op (each costs tens of us with cold caches)
    Tv = int(query_start_loc.tolist()[-1]) if Bn >= 0 else 0
    if Tv < T or Tv == 0:
        # A padded tail: the tokens past the last sequence are padding; their outputs are zero.
        full = torch.zeros_like(x)  # x's layout, as vLLM's empty_like(x)
        if Tv > 0:
            full[:, :Tv] = causal_conv1d_fn(
                x[:, :Tv], weight, bias, conv_states, query_start_loc, cache_indices,
                has_initial_state, activation, pad_slot_id, null_block_id,
            )  # fmt: skip
        return full
    cdll = _native_lib(weight, x, weight, bias, conv_states)
    if cdll is not None:  # the kernel reads the slots and skips pad/null requests itself
        return _fn_native(
            cdll, x, weight, bias, conv_states, query_start_loc, cache_indices,
            has_initial_state, use_silu, pad_slot_id, null_block_id,
        )  # fmt: skip
    qsl = query_start_loc.to(torch.int64)
    if cache_indices is not None:
        slots = cache_indices.to(torch.int64)
        valid = live_slots(slots, pad_slot_id, null_block_id)
    else:
        slots = torch.arange(Bn, dtype=torch.int64)
        valid = torch.ones(Bn, dtype=torch.bool)
    lens = qsl[1:] - qsl[:-1]
    write = valid & (lens > 0)

    ctype = compute_dtype(x, conv_states)
    xT = x.t().to(ctype)
    if not xT.is_contiguous():
        xT = xT.contiguous()
    wT = weight.t().to(ctype).contiguous()
    b = bias.to(ctype) if bias is not None else None
    safe = torch.where(valid, slots, torch.zeros_like(slots)).clamp(0, conv_states.shape[0] - 1)
    if has_initial_state is not None and K > 0 and Bn > 0:
        # A slot without initial state is never read: where(), not a product (NaN * 0).
        use_init = has_initial_state.reshape(-1).to(torch.bool) & valid
        init = torch.where(use_init[:, None, None], _gather_states(conv_states, safe, K, ctype), 0)
    else:
        init = torch.zeros(Bn, K, dim, dtype=ctype)
    out, final = _varlen_conv(xT, wT, b, init, qsl)
    if not bool(valid.all()):
        seq_of_tok = torch.repeat_interleave(torch.arange(Bn), lens, output_size=T)
        out.masked_fill_(~valid[seq_of_tok][:, None], 0.0)  # zeros, even where x is NaN
    if use_silu:
        F.silu(out, inplace=True)
    if K > 0 and bool(write.any()):
        _write_states(conv_states, slots[write], final[write])
    return _like_x(out.to(x.dtype).t(), x)


def _update_entry(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None, activation: object,
    conv_state_indices: Tensor | None, null_block_id: int | None, out: Tensor | None,
) -> bool:  # fmt: skip
    """One-token decode through the torch-op entry (:mod:`..native.entry`): True when it ran.

    False (nothing read or written) when the entry is unavailable or declines the form; the
    caller then checks the arguments and takes its own path. A bad slot value declines too,
    after the kernel's own check, so that the contract names the argument.
    """
    try:
        silu = silu_name(activation)
    except ContractError:
        return False  # the contract raises it again, after the checks that come first
    ops = _entry.ops()
    if ops is None or not (null_block_id is None or type(null_block_id) is int):
        return False
    cdll = _native_conv.lib()
    if cdll is None:
        return False
    try:
        rc = ops.conv_update(
            _entry.address(cdll, "mb_conv"), x, conv_state, weight, bias, silu,
            conv_state_indices, PAD_SLOT_ID, null_block_id, out, _native_conv.MAX_WIDTH,
        )  # fmt: skip
    except (TypeError, RuntimeError):
        return False  # not tensors, or a form the schema refuses: the contract will say
    if rc == _entry.DECLINED or rc == _build.BADINDEX:
        return False
    _build.checked("mb_conv", rc)
    return True


def causal_conv1d_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: bool | str | None = None,
    conv_state_indices: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None,
    query_start_loc: Tensor | None = None,
    max_query_len: int = -1,
    null_block_id: int | None = NULL_BLOCK_ID,
    block_idx_last_scheduled_token: Tensor | None = None,
    initial_state_idx: Tensor | None = None,
    validate_data: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Causal conv1d decode step(s), conv state updated in place.

    Args:
        x: ``(batch, dim)``, ``(batch, dim, seqlen)``, or ``(num_tokens, dim)`` with
            ``query_start_loc``.
        conv_state: ``(slots, dim, state_len >= W-1)``, any strides.
        weight: ``(dim, W)``.
        bias: ``(dim,)`` or None.
        conv_state_indices: ``(batch,)`` slots (identity when None); null (and pad) entries
            are skipped: their state is untouched and their output rows are not written.
        query_start_loc: ``(batch+1,)`` offsets for the varlen form.
        out: optional output like ``x``; when None, ``x`` is overwritten (vLLM's rule).
        num_accepted_tokens: ``(batch,)`` speculative decoding (the state holds ``W-2+S``
            columns; see :func:`mamba_backends.reference.causal_conv1d_update`): a per-request
            path, since speculative batches are small.

    Returns:
        The output, shaped like ``x``, in ``x.dtype``.
    """
    if (
        num_accepted_tokens is None
        and query_start_loc is None
        and block_idx_last_scheduled_token is None
        and initial_state_idx is None
        and _update_entry(
            x, conv_state, weight, bias, activation, conv_state_indices, null_block_id, out
        )
    ):
        return out if out is not None else x
    check_not_supported(
        "causal_conv1d_update",
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
    )
    contract = (
        x, conv_state, weight, bias, activation, conv_state_indices, num_accepted_tokens,
        query_start_loc, null_block_id, out,
    )  # fmt: skip
    # Plain decode on the fused kernel: the metadata here, the slot values in the kernel
    # (before any write); every other form checks the values here.
    fused = num_accepted_tokens is None and query_start_loc is None
    check_causal_conv1d_update_args(*contract, check_values=False if fused else None)
    use_silu = silu_name(activation)
    if num_accepted_tokens is not None:
        return _update_speculative(
            x, conv_state, weight, bias, use_silu, conv_state_indices, num_accepted_tokens,
            query_start_loc, null_block_id, out,
        )  # fmt: skip
    # Shapes, dtypes and slot ranges were checked by the validator: decode goes straight on.
    cdll = _native_lib(weight, x, weight, bias, conv_state, out)
    if cdll is not None:
        rc = _update_native(
            cdll, x, conv_state, weight, bias, use_silu, conv_state_indices, query_start_loc,
            null_block_id, out, check_slots=fused,
        )  # fmt: skip
        if rc == _build.BADINDEX:  # nothing was written: let the validator name the argument
            check_causal_conv1d_update_args(*contract)
            raise _build.NativeKernelError("causal_conv1d_update: the kernel refused the slots")
        return out if out is not None else x
    if fused:
        check_causal_conv1d_update_args(*contract)  # the values, for the PyTorch path
    dim, W = weight.shape
    K = W - 1
    # Token-major view of the inputs and per-request offsets.
    if query_start_loc is not None:
        qsl = query_start_loc.to(torch.int64)
        batch = qsl.numel() - 1
        xT = x
    elif x.dim() == 2:
        batch = x.shape[0]
        qsl = None
        xT = x
    else:
        batch, _, L = x.shape
        qsl = torch.arange(batch + 1, dtype=torch.int64) * L
        xT = x.transpose(1, 2).reshape(batch * L, dim)
    if conv_state_indices is not None:
        idx = conv_state_indices[:, 0] if conv_state_indices.dim() == 2 else conv_state_indices
        slots = idx.to(torch.int64).reshape(-1)
        valid = live_slots(slots, PAD_SLOT_ID, null_block_id)
    else:
        slots = torch.arange(batch, dtype=torch.int64)
        valid = torch.ones(batch, dtype=torch.bool)
    all_valid = bool(valid.all())
    slots_v = slots if all_valid else slots[valid]

    ctype = compute_dtype(x, conv_state)
    xs = xT
    wT = weight.t().to(ctype)
    b = bias.to(ctype) if bias is not None else None
    init = _gather_states(conv_state, slots_v, K, ctype)  # (b, K, dim)
    if qsl is None:
        xv = (xs if all_valid else xs[valid]).to(ctype)  # (b, dim)
        y = xv * wT[K]
        if b is not None:
            y.add_(b)
        for k in range(K):
            y.addcmul_(init[:, k], wT[k])
        new = torch.cat([init[:, 1:], xv[:, None]], dim=1) if K > 0 else init
        tok_rows = None if all_valid else valid.nonzero().reshape(-1)
    else:
        lens = qsl[1:] - qsl[:-1]
        keep = valid & (lens > 0)
        starts, lens_k = qsl[:-1][keep], lens[keep]
        qsl_k = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens_k, 0)])
        tok_rows = torch.repeat_interleave(starts - qsl_k[:-1], lens_k) + torch.arange(
            int(qsl_k[-1])
        )
        xv = xs[tok_rows].to(ctype)
        init = init[keep[valid]] if not all_valid else init[keep]
        y, new = _varlen_conv(xv, wT.contiguous(), b, init, qsl_k)
        slots_v = slots[keep]
    if use_silu:
        F.silu(y, inplace=True)
    if K > 0 and slots_v.numel():
        _write_states(conv_state, slots_v, new)
    # Output: into `out`, else into x (in place, as vLLM documents).
    res = out if out is not None else x
    resT = res if x.dim() == 2 else res.transpose(1, 2)
    y = y.to(x.dtype)
    if x.dim() == 3:
        assert tok_rows is not None
        L = resT.shape[1]
        resT[tok_rows // L, tok_rows % L] = y
    elif tok_rows is None:
        resT.copy_(y)
    else:
        resT.index_copy_(0, tok_rows, y)
    return res


def _update_speculative(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    use_silu: bool,
    conv_state_indices: Tensor | None,
    num_accepted_tokens: Tensor,
    query_start_loc: Tensor | None,
    null_block_id: int | None,
    out: Tensor | None,
) -> Tensor:
    """``causal_conv1d_update`` with ``num_accepted_tokens`` (``(batch,)``): request ``b``'s
    window is state columns ``[a-1, a-1+W-1)`` (``a = num_accepted_tokens[b]``), its ``S``
    inputs follow it, and columns ``[0, W-2+S)`` then hold the window minus its oldest column
    and the ``S`` inputs. ``x`` as in :func:`causal_conv1d_update`. Every state is read
    before any is written; pad/null slots and empty requests are skipped."""
    dim, W = weight.shape
    target = out if out is not None else x
    if query_start_loc is not None:
        q = query_start_loc.tolist()
        views = [(x[q[b] : q[b + 1]].T, target[q[b] : q[b + 1]].T) for b in range(len(q) - 1)]
    elif x.dim() == 2:
        views = [(x[b][:, None], target[b][:, None]) for b in range(x.shape[0])]
    else:
        views = [(x[b], target[b]) for b in range(x.shape[0])]
    if conv_state_indices is not None:
        col0 = conv_state_indices if conv_state_indices.dim() == 1 else conv_state_indices[:, 0]
        slots = col0.tolist()
    else:
        slots = list(range(len(views)))
    accepted = num_accepted_tokens.tolist()
    ctype = compute_dtype(x, conv_state)
    w = weight.to(ctype)
    bias_c = bias.to(ctype)[:, None] if bias is not None else None
    skip = {PAD_SLOT_ID, null_block_id} if conv_state_indices is not None else set()
    done: list[tuple[Tensor, Tensor, int, Tensor]] = []
    for b, (xs, ys) in enumerate(views):
        slot, S = int(slots[b]), xs.shape[1]
        if S == 0 or slot in skip:
            continue
        first = int(accepted[b]) - 1
        window = conv_state[slot, :, first : first + W - 1].to(ctype)
        inp = torch.cat([window, xs.to(ctype)], dim=1)  # (dim, W-1+S)
        y = (inp.unfold(1, W, 1) * w[:, None, :]).sum(-1)  # (dim, S)
        if bias_c is not None:
            y = y + bias_c
        if use_silu:
            y = F.silu(y)
        done.append((ys, y, slot, inp[:, 1:]))
    for ys, y, slot, new_cols in done:
        conv_state[slot, :, : new_cols.shape[1]] = new_cols.to(conv_state.dtype)
        ys.copy_(y.to(ys.dtype))
    return target
