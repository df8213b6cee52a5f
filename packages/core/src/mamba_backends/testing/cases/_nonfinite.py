"""Shared pieces of the numerics cases: NaN/inf injection, extreme gates, NaN-filled slots.

The spec fixes for everyone that NaN and inf in the inputs propagate as the spec's do, that no
NaN appears where the spec is finite, and that a slot no sequence reads is never read. The
family modules use these helpers to build such inputs, identically on the backend's device and
on the CPU (every choice comes from a seed, never from the device's generator).

Injection kinds (``poison``):

- ``nan``: one to three elements of one input (chosen by the seed) become NaN;
- ``inf``: the same with +/-inf;
- ``nan_last``: NaN in one element of the *last* token of each sequence, so that only that
  token (and nothing before it) is NaN in the spec; a chunked backend whose chunk ends there
  must not spread it to the earlier tokens of the chunk (``0 * NaN`` in a masked product).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor

from mamba_backends.testing._tensors import StatePool

#: The injection kinds a case may draw ("" = none).
POISONS = ("", "nan", "inf", "nan_last")


def inject(t: Tensor, seed: int, kind: str, tdim: int, rows: Sequence[int] | None = None) -> None:
    """Set one to three elements of ``t`` to NaN (``kind`` "nan"/"nan_last") or +/-inf
    ("inf"), in place. ``rows`` restricts the positions to those indices along ``tdim`` (the
    token axis); ``None`` allows any."""
    if t.numel() == 0:
        return
    rng = random.Random(seed)
    n_rows = t.shape[tdim]
    allowed = list(range(n_rows)) if rows is None else list(rows)
    if not allowed:
        return
    count = 1 if kind == "nan_last" else rng.randint(1, 3)
    for _ in range(count):
        idx = [rng.randrange(s) for s in t.shape]
        idx[tdim] = rng.choice(allowed)
        if kind == "inf":
            value = float("inf") if rng.random() < 0.5 else float("-inf")
        else:
            value = float("nan")
        t[tuple(idx)] = value


def inject_one_of(
    named: Sequence[tuple[str, Tensor | None, int]],
    seed: int,
    kind: str,
    rows: Sequence[int] | None = None,
) -> str:
    """Inject into one tensor of ``named`` (``(name, tensor, token_dim)``, chosen by the seed;
    ``None`` entries are skipped); ``nan_last`` injects at every row in ``rows``. Returns the
    name of the tensor that was changed ("" when ``kind`` is empty)."""
    if not kind:
        return ""
    live = [(n, t, d) for n, t, d in named if t is not None and t.numel()]
    if not live:
        return ""
    name, t, tdim = random.Random(seed).choice(live)
    if kind == "nan_last":
        for i, r in enumerate(rows or ()):
            inject(t, seed + 31 * i, kind, tdim, [r])
    else:
        inject(t, seed, kind, tdim, rows)
    return name


def fill_unread(pool: StatePool, read: Sequence[int]) -> None:
    """NaN in every slot of ``pool`` that no sequence reads (the null block 0 included), as a
    freed vLLM block may hold: a backend that reads them leaks NaN into its outputs."""
    keep = set(int(s) for s in read)
    for s in range(pool.view.shape[0]):
        if s not in keep:
            pool.view[s] = float("nan")


def strong_log_decays(g: torch.Generator, *shape: int) -> Tensor:
    """Per-token log decays over the whole range a model produces, float64: from about
    -0.002 to -1100 (``-exp(A_log) * softplus(a + dt_bias)`` with large ``A_log`` and ``a``),
    so that cumulative sums over a 64-token chunk reach -1e4, with tiny decays right after
    huge ones (the case where differences of cumulative sums lose every digit)."""
    return -torch.exp(torch.rand(shape, generator=g, dtype=torch.float64) * 13.0 - 6.0)
