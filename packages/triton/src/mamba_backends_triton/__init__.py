"""mamba-backends Triton package: device-agnostic Triton kernels shared by GPU vendors.

Kernels land in later work. Importing this package does not import triton.
"""

from __future__ import annotations

__version__ = "0.1.0"
