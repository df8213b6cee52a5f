"""The plugin's ``mamba-backends info`` section (entry point ``mamba_backends.info`` -> ``vllm``).

Computing the routing imports vLLM (seconds), so the table is shown only when asked for
(``mamba-backends info --vllm``) or inside a process that already imported vLLM; otherwise the
section is one line that says how to see it.
"""

from __future__ import annotations

import sys
from typing import Any

from mamba_backends.info import InfoSection
from mamba_backends_vllm.versions import describe_supported

#: A row's columns: (key in the routing table's layer dict, header, width).
_COLUMNS = (
    ("layer_class", "vLLM layer", 28),
    ("status", "status", 8),
    ("backend", "backend", 22),
    ("rule", "rule", 9),
    ("patched", "patched", 7),
)

#: What the two state columns mean (shown under the table).
LEGEND = (
    "status routed: that layer type goes to the backend in this process (vLLM's attention "
    "backend is overridden and an import hook waits for the layer's module; in a 'plan' it "
    "would, once vLLM loads the plugin); native: vLLM's own kernels serve it, for the reason "
    "given.",
    "patched yes: vLLM imported the layer's module in this process and its kernels now call "
    "the backend; no: not imported here (a model without that layer type, a process that "
    "imports no layer such as vLLM's engine core, or outside vLLM).",
)


def _row(mamba_type: str, layer: dict[str, Any]) -> str:
    cells = [f"{mamba_type:<18}"]
    for key, _, width in _COLUMNS:
        value = layer.get(key)
        if isinstance(value, bool):
            value = "yes" if value else "no"
        cells.append(f"{str(value or '-'):<{width}}")
    reason = layer.get("reason") or ""
    return " ".join(cells + [reason]).rstrip()


def info_section(requested: bool = False) -> InfoSection:
    """The vLLM routing table (see :func:`mamba_backends_vllm.routing_table`) as a section."""
    if not requested and "vllm" not in sys.modules:
        return InfoSection(
            data={"routing": None},
            summary="plugin installed; `mamba-backends info --vllm` shows which backend serves "
            "each vLLM mamba layer (imports vLLM)",
            lines=(),
        )
    from mamba_backends_vllm import routing_table

    table = dict(routing_table())
    header = " ".join([f"{'mamba type':<18}", *(f"{h:<{w}}" for _, h, w in _COLUMNS), "reason"])
    lines = [header]
    lines += [_row(t, layer) for t, layer in table.get("layers", {}).items()]
    lines += LEGEND
    return InfoSection(
        data={"routing": table},
        summary=f"plugin {table.get('summary', '?')}  ({table.get('source', '')}; "
        f"supported vLLM {describe_supported(table.get('supported_vllm_by_platform'))})",
        lines=tuple(lines),
    )
