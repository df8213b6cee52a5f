"""Every backend op as a ``torch.library`` custom op (``torch.ops.mamba_backends.*``).

:meth:`mamba_backends.MambaBackend.ops` hands out :func:`custom_op_wrapper` functions by
default, so that ``torch.compile`` (``fullgraph=True``) sees each op as one opaque node with a
fake implementation and exact mutation annotations, as vLLM's compiled mode and CUDA graphs
need. A wrapper calls the registered op when it is traced (``torch.compile``, ``export``, a
dispatch mode such as ``FakeTensorMode``) and the backend's function directly in eager mode,
where the dispatcher would add about 15-25 us per call (measured on CPU; a decode step calls
two or three ops per layer).

``MAMBA_BACKENDS_CUSTOM_OPS`` (read at each ``ops()`` call):

- unset or ``1``: the wrappers above;
- ``always``: wrappers that call the registered op in eager mode too (tests of the path);
- ``0``: the backends' Python functions, no registration (so does ``ops(raw=True)``).

- :mod:`.families`: per op, the arguments it writes, how its result is built, its fake;
- :mod:`.registry`: schema, registration and the signature-keeping wrappers.
"""

from __future__ import annotations

import os

from mamba_backends.library.families import NEW, OP_FAMILIES, New, OpFamily
from mamba_backends.library.registry import (
    NAMESPACE,
    Registered,
    custom_op_wrapper,
    op_base_name,
    registered,
    tracing,
)

#: Set to ``0`` to make ``ops()`` hand out the raw Python ops (no custom-op registration).
CUSTOM_OPS_ENV = "MAMBA_BACKENDS_CUSTOM_OPS"


def custom_ops_mode() -> str:
    """``"off"``, ``"trace"`` (the default) or ``"always"``, from ``MAMBA_BACKENDS_CUSTOM_OPS``."""
    value = os.environ.get(CUSTOM_OPS_ENV, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "always" if value == "always" else "trace"


__all__ = [
    "CUSTOM_OPS_ENV",
    "NAMESPACE",
    "NEW",
    "New",
    "OP_FAMILIES",
    "OpFamily",
    "Registered",
    "custom_op_wrapper",
    "custom_ops_mode",
    "op_base_name",
    "registered",
    "tracing",
]
