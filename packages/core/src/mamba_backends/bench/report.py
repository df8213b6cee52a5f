"""Output: the text table, ``bench.json`` and a bar plot of the ratios."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_COLUMNS = (
    ("op", "op"),
    ("shape", "shape"),
    ("dtype", "dtype"),
    ("ours ms", "ours_ms"),
    ("baseline", "baseline"),
    ("base ms", "baseline_ms"),
    ("ours/base", "ratio"),
    ("ours/best", "ratio_best"),
    ("GB/s", "gbps"),
    ("copy GB/s", "copy_gbps"),
    ("tok/s", "tokens_per_s"),
    ("TFLOP/s", "tflops"),
    ("note", "note"),
)


def _fmt(key: str, row: dict[str, Any]) -> str:
    v = row.get(key)
    if key == "ours_ms" and row.get("ours_status") != "ok":
        return str(row.get("ours_status"))
    if key == "baseline_ms" and row.get("baseline_status") != "ok":
        return str(row.get("baseline_status"))
    if v is None:
        return "-"
    if isinstance(v, float):
        if key in ("ratio", "ratio_best"):
            return f"{v:.3g}x" if v >= 0.1 else f"{v:.2g}x"
        if key == "tokens_per_s":
            return f"{v:,.0f}"
        if key == "tflops":
            return f"{v:.3g}"
        if key in ("gbps", "copy_gbps"):
            return f"{v:.1f}"
        return f"{v:.3f}" if v < 100 else f"{v:.1f}"
    s = str(v)
    return s if key != "note" or len(s) <= 60 else s[:57] + "..."


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table (one line per row; ratio = ours / baseline, lower is better)."""
    header = [h for h, _ in _COLUMNS]
    body = [[_fmt(k, r) for _, k in _COLUMNS] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in
              enumerate(header)]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())
    return "\n".join(lines)


def write_json(rows: Sequence[dict[str, Any]], meta: dict[str, Any], path: Path) -> Path:
    """``{"meta": ..., "rows": [...]}`` to ``path`` (NaN/inf written as null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    data = {"meta": meta, "rows": [{k: clean(v) for k, v in r.items()} for r in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path | None:
    """A horizontal bar plot of ours/baseline on a log axis; None (logged) without matplotlib
    or when no row has both timings."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - any import failure means "no plot"
        logger.warning("plot skipped: matplotlib is not importable (%s)", type(e).__name__)
        return None
    measured = [r for r in rows if r.get("ratio") is not None]
    if not measured:
        logger.warning("plot skipped: no row has both ours and a baseline measured")
        return None
    labels = [f"{r['op']} [{r['dtype']}] vs {r['baseline']}\n{r['shape']}" for r in measured]
    ratios = [float(r["ratio"]) for r in measured]
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(measured) + 1.5))
    colors = ["tab:green" if x <= 1.0 else "tab:red" for x in ratios]
    ax.barh(range(len(ratios)), ratios, color=colors)
    ax.set_yticks(range(len(ratios)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("ours / baseline (median time; < 1 means ours is faster)")
    ax.set_xlim(min(ratios) / 2, max(max(ratios), 1.0) * 4)
    ax.set_title(title.replace("; ", "\n"), fontsize=9)
    for i, x in enumerate(ratios):
        ax.text(x, i, f" {x:.3g}x", va="center", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
