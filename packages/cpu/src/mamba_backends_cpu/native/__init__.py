"""Native (C) kernels of the CPU backends: the build, cache and load layer.

The C sources live in ``csrc/`` (package data): one translation unit per kernel family
(``scan.c``, ``ssd.c``, ``ssu.c``, ``conv.c``, ``gdn.c``), the helpers every kernel shares in
``mb_common.h``, ISA-specific forms in ``csrc/isa/``, and the kernels' argument structs in
``mb_args.h``. :mod:`._build` compiles them on first use (see there for the cache key and the
environment variables); :mod:`.ssm`, :mod:`.conv` and :mod:`.gdn` hold the ctypes mirrors of
the structs and the wrappers the ops call. Every op keeps a pure-PyTorch path for when a
library is unavailable.
"""

from __future__ import annotations

from typing import Any

from mamba_backends_cpu.native import _build
from mamba_backends_cpu.native._build import NativeABIError, NativeBuildError, NativeKernelError

__all__ = ["NativeABIError", "NativeBuildError", "NativeKernelError", "status"]


def status() -> dict[str, dict[str, Any]]:
    """Per native library (``ssm``, ``conv``, ``gdn``): whether it is active, and why not.

    Builds nothing. Each entry holds ``active`` (bool: loaded in this process), ``reason``
    (None when active; else ``disabled by MAMBA_BACKENDS_CPU_NATIVE=0``, ``no C compiler``,
    ``build error: ...``, ``load error: ...`` or ``not built yet``), ``isa`` (the ISA level
    the loaded build targets, from its ``mb_isa_level()``; None until loaded), ``march`` (the
    ``-march`` value), ``cflags``, ``compiler``, ``openmp`` (the runtime it links), ``cache``
    (the shared object's path), ``cached`` (whether that file exists) and ``sources``.
    """
    from mamba_backends_cpu.native import conv, gdn, ssm  # noqa: F401  (they register)

    return {name: _build.library_status(lib) for name, lib in _build.LIBRARIES.items()}
