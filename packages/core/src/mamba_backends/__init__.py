"""mamba-backends core: backend selection per mamba type, platform first.

Public API::

    from mamba_backends import get_mamba_backend
    backend = get_mamba_backend("mamba2")
    backend.ops().mamba_chunk_scan_combined_varlen(...)
"""

from __future__ import annotations

from typing import Any

from mamba_backends._resolve import BackendImportError
from mamba_backends.backend import OP_NAMES, OPTIONAL_OPS, MambaBackend, MambaOps
from mamba_backends.metadata import MambaMetadata, MambaMetadataBuilder
from mamba_backends.platform import (
    Platform,
    PlatformError,
    get_current_platform,
    reset_current_platform,
)
from mamba_backends.selector import (
    DEFAULT_BACKENDS,
    BackendTypeError,
    clear_backend_cache,
    get_mamba_backend,
    register_backend_name,
    select_mamba_backend,
)
from mamba_backends.types import MAMBA_TYPES, NULL_BLOCK_ID, PAD_SLOT_ID

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BACKENDS",
    "MAMBA_TYPES",
    "NULL_BLOCK_ID",
    "OP_NAMES",
    "OPTIONAL_OPS",
    "PAD_SLOT_ID",
    "BackendImportError",
    "BackendTypeError",
    "MambaBackend",
    "MambaMetadata",
    "MambaMetadataBuilder",
    "MambaOps",
    "Platform",
    "PlatformError",
    "clear_backend_cache",
    "current_platform",
    "get_current_platform",
    "get_mamba_backend",
    "register_backend_name",
    "reset_current_platform",
    "select_mamba_backend",
]


def __getattr__(name: str) -> Any:
    # ``current_platform`` is resolved on first access, never at import time.
    if name == "current_platform":
        return get_current_platform()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
