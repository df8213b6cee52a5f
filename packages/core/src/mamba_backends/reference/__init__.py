"""The executable specification: plain, loop-level PyTorch ops in float64.

Every op has vLLM's signature and serving semantics. The spec is the oracle of every test and
the default backend of last resort. It is never tuned to match a kernel.
"""

from mamba_backends.reference.ops import *  # noqa: F403
from mamba_backends.reference.ops import __all__ as _ops_all

__all__ = list(_ops_all)
