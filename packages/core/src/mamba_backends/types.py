"""The mamba layer types that mamba-backends selects a backend for."""

from __future__ import annotations

#: Every valid mamba type, in a stable order (used in errors, ``info`` and tests).
MAMBA_TYPES: tuple[str, ...] = ("mamba1", "mamba2", "short_conv", "linear_attention", "gdn")

#: vLLM's ``PAD_SLOT_ID``: a request slot that must be skipped and never written.
PAD_SLOT_ID = -1
#: vLLM's ``NULL_BLOCK_ID``: the reserved block 0 of the state pool, never written.
NULL_BLOCK_ID = 0


def check_mamba_type(mamba_type: object) -> str:
    """Return ``mamba_type`` if it is valid, else raise ``ValueError`` naming the valid ones."""
    if not isinstance(mamba_type, str) or mamba_type not in MAMBA_TYPES:
        raise ValueError(
            f"Invalid mamba_type {mamba_type!r}; valid mamba types are: {', '.join(MAMBA_TYPES)}"
        )
    return mamba_type
