"""The targets of issues 9 and 10, checked against the bench rows of ``benchmarks/gpu.py``.

Every target reads rows measured in the same run (ours and the baselines side by side) and
returns ``pass``, ``miss``, ``report`` (no target, numbers only) or ``n/a`` (a number it needs
was not measured, with the reason). Rows are the dicts of :mod:`mamba_backends.bench.runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Rows = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class Target:
    """One line of an issue's table: ``op`` rows of ``mamba_type``, judged by ``check``."""

    issue: int
    name: str
    op: str
    mamba_type: str
    goal: str
    check: Callable[[Rows], tuple[str, str]]


def _ours(rows: Rows) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("ours_status") == "ok"), None)


def _base(rows: Rows, prefix: str) -> dict[str, Any] | None:
    return next(
        (r for r in rows if str(r.get("baseline", "")).startswith(prefix)),
        None,
    )


def _why(rows: Rows, prefix: str | None = None) -> str:
    if not rows:
        return "no row measured (time cap, or the op was not run)"
    r = rows[0]
    if r.get("ours_status") != "ok":
        return f"ours: {r.get('ours_status')} ({r.get('note') or ''})"
    b = _base(rows, prefix) if prefix else None
    if prefix and b is None:
        return f"no {prefix} row"
    if b is not None and b.get("baseline_status") != "ok":
        return f"{b.get('baseline')}: {b.get('baseline_status')} ({b.get('note') or ''})"
    if prefix is None:
        bad = [f"{x.get('baseline')}: {x.get('baseline_status')}" for x in rows]
        return "no baseline measured (" + "; ".join(bad) + "; see the bench rows' notes)"
    return "not measured"


def pct_copy(row: dict[str, Any], ms_key: str = "ours_ms") -> float | None:
    """Achieved bandwidth (bytes_moved / median) as a fraction of the same-run copy's."""
    ms, nbytes, copy = row.get(ms_key), row.get("bytes_moved"), row.get("copy_gbps")
    if not ms or not nbytes or not copy:
        return None
    return nbytes / (ms * 1e-3) / 1e9 / copy


def _ratio_le(prefix: str, limit: float) -> Callable[[Rows], tuple[str, str]]:
    def check(rows: Rows) -> tuple[str, str]:
        b = _base(rows, prefix)
        if b is None or b.get("ratio") is None:
            return "n/a", _why(rows, prefix)
        r = float(b["ratio"])
        return ("pass" if r <= limit else "miss"), f"{r:.3f}x {b['baseline']}"

    return check


def _best_le(limit: float) -> Callable[[Rows], tuple[str, str]]:
    def check(rows: Rows) -> tuple[str, str]:
        o = _ours(rows)
        if o is None or o.get("ratio_best") is None:
            return "n/a", _why(rows)
        bases = ", ".join(
            f"{r['baseline']} {100 * p:.0f}% of copy"
            for r in rows
            if (p := pct_copy(r, "baseline_ms")) is not None
        )
        r = float(o["ratio_best"])
        pct = pct_copy(o)
        own = f"; ours {100 * pct:.0f}% of copy" if pct is not None else ""
        extra = f" ({bases})" if bases else ""
        return ("pass" if r <= limit else "miss"), (
            f"{r:.3f}x best ({o['best_baseline']}){own}{extra}"
        )

    return check


def _copy_ge(frac: float, also: Callable[[Rows], tuple[str, str]] | None = None) -> Any:
    def check(rows: Rows) -> tuple[str, str]:
        o = _ours(rows)
        p = pct_copy(o) if o is not None else None
        if o is None or p is None:
            return "n/a", _why(rows)
        base = ", ".join(
            f"{r['baseline']} {100 * q:.0f}%"
            for r in rows
            if (q := pct_copy(r, "baseline_ms")) is not None
        )
        status = "pass" if p >= frac else "miss"
        detail = f"ours {100 * p:.0f}% of copy ({o['copy_gbps']:.0f} GB/s)"
        detail += f"; {base}" if base else ""
        if also is not None:
            s2, d2 = also(rows)
            detail += f"; {d2}"
            if s2 != "pass":
                status = "miss" if s2 == "miss" or status == "miss" else s2
        return status, detail

    return check


def _report(rows: Rows) -> tuple[str, str]:
    o = _ours(rows)
    if o is None:
        return "n/a", _why(rows)
    p = pct_copy(o)
    tok = o.get("tokens_per_s")
    tok_s = f"{tok:,.0f} tok/s" if tok else "- tok/s"
    return "report", tok_s + (f", {100 * p:.0f}% of roofline copy" if p is not None else "")


TARGETS: tuple[Target, ...] = (
    Target(9, "conv1d prefill", "causal_conv1d_fn", "mamba2",
           "<= 0.5x best of vLLM, fla", _best_le(0.5)),
    Target(9, "conv1d update, batch 256", "causal_conv1d_update", "mamba2",
           "<= 1.0x vLLM", _ratio_le("vllm", 1.0)),
    Target(9, "SSU decode, Mamba2 form", "selective_state_update", "mamba2",
           "<= 1.0x vLLM and >= 85% copy", _copy_ge(0.85, _ratio_le("vllm", 1.0))),
    Target(9, "SSU decode, Mamba1 form", "selective_state_update", "mamba1",
           ">= 85% copy (vLLM ~32%)", _copy_ge(0.85)),
    Target(9, "SSD varlen prefill", "mamba_chunk_scan_combined_varlen", "mamba2",
           "<= 1.0x vLLM", _ratio_le("vllm", 1.0)),
    Target(9, "Mamba1 varlen scan", "selective_scan_fn", "mamba1",
           "tokens/s, % of roofline", _report),
    Target(10, "GDN chunk", "chunk_gated_delta_rule", "gdn",
           "<= 1.0x fla chunk_gated_delta_rule", _ratio_le("fla", 1.0)),
    Target(10, "GDN decode", "fused_recurrent_gated_delta_rule", "gdn",
           ">= 85% copy (state read+write)", _copy_ge(0.85)),
    Target(10, "lightning prefill", "lightning_attention", "linear_attention",
           "<= 1.0x fla chunk_simple_gla", _ratio_le("fla", 1.0)),
    Target(10, "linear decode", "linear_decode_forward", "linear_attention",
           ">= 85% copy", _copy_ge(0.85)),
)  # fmt: skip


def evaluate(rows: Rows) -> list[dict[str, Any]]:
    """Every target against the rows: issue, name, goal, status, detail."""
    out = []
    for t in TARGETS:
        mine = [r for r in rows if r.get("op") == t.op and r.get("mamba_type") == t.mamba_type]
        try:
            status, detail = t.check(mine)
        except Exception as e:  # noqa: BLE001 - a broken row is a line, not a crash
            status, detail = "n/a", f"{type(e).__name__}: {e}"
        out.append(
            {
                "issue": t.issue,
                "target": t.name,
                "goal": t.goal,
                "status": status,
                "detail": detail,
                "shape": mine[0].get("shape") if mine else None,
            }
        )
    return out


def markdown_targets(results: Sequence[dict[str, Any]]) -> str:
    """The targets as a markdown table."""
    lines = ["| issue | target | goal | status | measured (same run) |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['issue']} | {r['target']} | {r['goal']} | {r['status']} | "
            f"{str(r['detail']).replace('|', '/')} |"
        )
    return "\n".join(lines)
