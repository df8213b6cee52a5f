"""mamba-backends Triton package: device-agnostic Triton kernels shared by GPU vendors.

Importing this package (or :mod:`.backends`) does not import triton; :mod:`.ops` does.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

_TRUE = ("1", "true", "on", "yes")


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``).

    Asks Triton's own setting once triton is imported (it may be set in code), else reads the
    environment variable, so that this costs no triton import.
    """
    triton = sys.modules.get("triton")
    knobs = getattr(triton, "knobs", None) if triton is not None else None
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE
