"""The device suite: the conformance kit on every backend the ROCM platform chooses, in every
declared dtype, on a real device. Without one (this CPU) the Triton backends declare no usable
device and every case skips; ``nox -s test-rocm`` runs it on the hardware."""

from __future__ import annotations

from mamba_backends._resolve import BackendImportError, resolve_qualname
from mamba_backends.testing import conformance_tests
from mamba_backends.types import MAMBA_TYPES
from mamba_backends_rocm.platform import RocmPlatform


def _chosen() -> list[str]:
    """The platform's backend per type, without those whose class does not exist yet."""
    p = RocmPlatform()
    out = []
    for t in sorted(MAMBA_TYPES):
        path = p.get_mamba_backend_cls(t, None)
        try:
            if path:
                resolve_qualname(path)
                out.append(path)
        except BackendImportError:
            continue
    return out


TestRocmConformance = conformance_tests(_chosen())
