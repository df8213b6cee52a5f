"""The CPU tuning tables: registered, valid, found for the bench shapes, and read by the ops."""

from __future__ import annotations

import ctypes
import importlib.metadata as md
import json
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch

from mamba_backends import tuning
from mamba_backends.bench.cases import CASES, DTYPES, CaseSpec
from mamba_backends.bench.inputs import BUILDERS
from mamba_backends.tuning import TuningError, clear_tuning_cache, configs
from mamba_backends_cpu.isa import cpu_isa
from mamba_backends_cpu.native import _build
from mamba_backends_cpu.native import conv as native_conv
from mamba_backends_cpu.native import gdn as native_gdn
from mamba_backends_cpu.native import ssm as native_ssm
from mamba_backends_cpu.ops import conv1d, gdn, lightning, selective_scan, ssd
from mamba_backends_cpu.tuning import FIELDS, NATIVE_FIELDS, cpu_config


def _cdt(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


#: op -> the config the op reads at a bench row's shape (through the op module's own keys).
CONFIG_AT: dict[str, Callable[[dict[str, Any], torch.dtype], Any]] = {
    "chunk_gated_delta_rule": lambda p, dt: gdn._prefill_config(dt, p["K"], p["V"]),
    "fused_recurrent_gated_delta_rule": lambda p, dt: gdn._decode_block_bytes(dt, p["K"], p["V"]),
    "lightning_attention": lambda p, dt: lightning._prefill_config(
        dt, p["D"], p["D"], p.get("block", 256)
    ),
    "linear_decode_forward": lambda p, dt: lightning._decode_block_bytes(dt, p["D"]),
    "selective_scan_fn": lambda p, dt: selective_scan._block_lengths(_cdt(dt), p["N"]),
    "mamba_chunk_scan_combined_varlen": lambda p, dt: ssd._block_len(
        _cdt(dt), p["P"], p["N"], p["chunk"]
    ),
}

BENCH_ROWS = [c for size in ("full", "quick") for c in CASES["cpu"][size] if c.op in CONFIG_AT]


@pytest.fixture(autouse=True)
def _fresh_tables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(tuning.ENV_DIR, raising=False)
    clear_tuning_cache()
    yield
    clear_tuning_cache()


def test_tables_are_registered_and_valid() -> None:
    eps = [ep for ep in md.entry_points(group=tuning.GROUP) if ep.name == "cpu"]
    assert [ep.value for ep in eps] == ["mamba_backends_cpu.tuning"]
    folder = resources.files("mamba_backends_cpu.tuning")
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".json"))
    assert files == sorted(f"{op}.json" for op in FIELDS)
    assert set(FIELDS) - set(NATIVE_FIELDS) == set(CONFIG_AT) == set(ALTERNATIVE)
    assert set(NATIVE_FIELDS) == set(NATIVE) == set(NATIVE_DEFAULTS)
    assert {native_conv.TUNING_OP, native_gdn.TUNING_OP, native_ssm.SCAN_TUNING_OP} == set(NATIVE)
    for op in FIELDS:
        cfgs = configs(op, "cpu")  # reads and validates the file
        assert cfgs and all(device == "cpu" for device, _ in cfgs)
        assert all(set(FIELDS[op]) <= set(cfg) for _, cfg in cfgs)


def test_defaults_are_the_former_constants() -> None:
    """Moving the constants into tables did not change them (64-token chunks, 4 MiB decode
    blocks, the scan's halving block lengths, 64-token SSD blocks); bf16 GEMMs only where the
    ISA has bf16 products (elsewhere they are emulated: 5-8x slower measured on AVX2), and
    none for lightning, whose fp32 state products left bf16 ones no faster (its note)."""
    bf16 = torch.bfloat16
    hw = cpu_isa().level == "avx512-bf16"
    assert gdn._prefill_config(bf16, 128, 128) == {"chunk_size": 64, "bf16_gemms": hw}
    assert gdn._decode_block_bytes(bf16, 128, 128) == 4 << 20
    assert lightning._prefill_config(bf16, 128, 128, 256) == {"chunk_size": 64, "bf16_gemms": False}
    assert lightning._decode_block_bytes(bf16, 128) == 4 << 20
    assert selective_scan._block_lengths(torch.float32, 16) == [64, 32, 16, 8, 4, 2, 1]
    assert ssd._block_len(torch.float32, 64, 128, 256) == 64


@pytest.mark.parametrize("op", ["chunk_gated_delta_rule", "lightning_attention"])
@pytest.mark.parametrize("level", ["avx512-bf16", "avx512", "avx2", "neon", "portable"])
def test_bf16_products_only_where_the_isa_has_them(op: str, level: str) -> None:
    """The tables' isa rows: bf16 products on AVX512-BF16 only (emulated elsewhere: 5-9x
    slower than fp32 products measured on AVX2, see the tables' notes); lightning has none."""
    keys: dict[str, int | str] = {"K": 128, "V": 128} if op == "chunk_gated_delta_rule" else {
        "D": 128, "E": 128, "block_size": 256}  # fmt: skip
    cfg = cpu_config(op, isa=level, dtype="bfloat16", **keys)
    assert cfg["bf16_gemms"] is (level == "avx512-bf16" and op == "chunk_gated_delta_rule")


@pytest.mark.parametrize("case", BENCH_ROWS, ids=lambda c: f"{c.op}-{c.dtype}-{c.model or 'quick'}")
def test_config_found_for_bench_shapes(case: CaseSpec) -> None:
    assert CONFIG_AT[case.op](case.params, DTYPES[case.dtype])


#: op -> (quick bench row params, a valid non-default config that must give the same result)
ALTERNATIVE: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "chunk_gated_delta_rule": (
        {"H": 1, "HV": 2, "K": 16, "V": 16, "seqlens": (70, 33)},
        {"chunk_size": 16, "bf16_gemms": True},
    ),
    "fused_recurrent_gated_delta_rule": (
        {"H": 1, "HV": 2, "K": 16, "V": 16, "batch": 5},
        {"decode_block_bytes": 1},
    ),
    "lightning_attention": (
        {"B": 1, "H": 2, "D": 16, "T": 100, "block": 64},
        {"chunk_size": 16, "bf16_gemms": True},
    ),
    "linear_decode_forward": ({"H": 2, "D": 16, "batch": 5}, {"decode_block_bytes": 1}),
    "selective_scan_fn": ({"dim": 16, "N": 8, "seqlens": (40, 9)}, {"block_lengths": [4, 2]}),
    "mamba_chunk_scan_combined_varlen": (
        {"H": 2, "P": 8, "N": 8, "G": 1, "chunk": 32, "seqlens": (70, 9)},
        {"block": 8},
    ),
}

OPS = {
    "chunk_gated_delta_rule": gdn.chunk_gated_delta_rule,
    "fused_recurrent_gated_delta_rule": gdn.fused_recurrent_gated_delta_rule,
    "lightning_attention": lightning.lightning_attention,
    "linear_decode_forward": lightning.linear_decode_forward,
    "selective_scan_fn": selective_scan.selective_scan_fn,
    "mamba_chunk_scan_combined_varlen": ssd.mamba_chunk_scan_combined_varlen,
    "causal_conv1d_fn": conv1d.causal_conv1d_fn,
}


def _run(op: str, params: dict[str, Any] | None = None) -> list[torch.Tensor]:
    """``op`` at its small shape (or ``params``), fp32: every tensor it returns or writes."""
    shape = ALTERNATIVE[op][0] if params is None else params
    inputs = BUILDERS[op](shape, torch.float32, torch.device("cpu"))
    args = {k: v for k, v in inputs.args.items() if not k.startswith("_")}
    result = OPS[op](**args)
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    written = [v for v in args.values() if isinstance(v, torch.Tensor)]
    return [t.clone() for t in results + written if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("op", sorted(ALTERNATIVE))
def test_ops_read_their_table(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PyTorch path takes its config from the lookup: a broken one is refused by name, and
    another valid one gives the same result."""
    monkeypatch.setenv("MAMBA_BACKENDS_CPU_NATIVE", "0")
    with tuning.override(op, {}, device="cpu"):
        with pytest.raises(TuningError, match=f"{op}.*{next(iter(FIELDS[op]))}"):
            _run(op)
    expected = _run(op)
    with tuning.override(op, ALTERNATIVE[op][1], device="cpu"):
        actual = _run(op)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-5, equal_nan=True)


def test_env_dir_reaches_the_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder in MAMBA_BACKENDS_TUNING_DIR wins over the installed table."""
    monkeypatch.setenv("MAMBA_BACKENDS_CPU_NATIVE", "0")
    entry = {"device": "cpu", "config": {"chunk_size": 48, "bf16_gemms": True}}
    text = json.dumps({"op": "chunk_gated_delta_rule", "configs": [entry]})
    (tmp_path / "chunk_gated_delta_rule.json").write_text(text)
    monkeypatch.setenv(tuning.ENV_DIR, str(tmp_path))
    with pytest.raises(TuningError, match="'chunk_size' must be a power of two, got 48"):
        _run("chunk_gated_delta_rule")
    monkeypatch.delenv(tuning.ENV_DIR)
    _run("chunk_gated_delta_rule")


# ------------------------------------------------------------------ native kernels' tunables

#: The former module constants of the native layer (``CHUNK_TOKENS``/``PREFETCH`` in
#: ``native/conv.py``, ``TOKEN_BLOCK``/``ROWS_MAX_TOKENS`` in ``native/gdn.py``,
#: ``SCAN_PREFETCH`` in ``native/ssm.py``).
NATIVE_DEFAULTS: dict[str, dict[str, int]] = {
    "native_conv": {"chunk_tokens": 128, "prefetch": 8},
    "native_gdn": {"token_block": 32, "rows_max_tokens": 8},
    "native_scan": {"prefetch": 32},
}

#: table -> (public op, bench params, a non-default config, the kernel symbol that runs with
#: the defaults, the one the non-default config must select). The conv row is one long
#: request (split in token chunks across threads); the GDN row decodes 5 single tokens, and
#: ``rows_max_tokens = 0`` moves them from the rows kernel to the tile kernel (token block 1).
NATIVE: dict[str, tuple[str, dict[str, Any], dict[str, int], str, str]] = {
    "native_conv": (
        "causal_conv1d_fn",
        {"dim": 80, "W": 4, "seqlens": (300,)},
        {"chunk_tokens": 7, "prefetch": 0},
        "mb_conv",
        "mb_conv",
    ),
    "native_gdn": (
        "fused_recurrent_gated_delta_rule",
        {"H": 1, "HV": 2, "K": 16, "V": 40, "batch": 5},
        {"token_block": 1, "rows_max_tokens": 0},
        "mb_gdn_rows",
        "mb_gdn_tiles",
    ),
    "native_scan": (
        "selective_scan_fn",
        {"dim": 40, "N": 16, "seqlens": (70, 9)},
        {"prefetch": 3},
        "mb_scan_varlen",
        "mb_scan_varlen",
    ),
}


def test_native_defaults_are_the_former_constants() -> None:
    assert cpu_config("native_conv", dim=4096, W=4) == NATIVE_DEFAULTS["native_conv"]
    assert cpu_config("native_gdn", K=128, V=128) == NATIVE_DEFAULTS["native_gdn"]
    assert cpu_config("native_scan", N=16) == NATIVE_DEFAULTS["native_scan"]


def _run_native(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[torch.Tensor], list[tuple[str, ctypes.Structure]]]:
    """The table's op on the native path: its tensors, and every (kernel, struct) it called."""
    op, params, *_ = NATIVE[table]
    calls: list[tuple[str, ctypes.Structure]] = []
    real = _build.call

    def spy(fn: Any, args: ctypes.Structure, allow: tuple[int, ...] = ()) -> int:
        calls.append((getattr(fn, "__name__", str(fn)), args))
        return real(fn, args, allow)

    monkeypatch.setattr(_build, "call", spy)
    try:
        return _run(op, params), calls
    finally:
        monkeypatch.setattr(_build, "call", real)


@pytest.mark.parametrize("table", sorted(NATIVE))
def test_native_kernels_read_their_table(table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native kernels take their tunables from the lookup: the defaults reach the
    argument struct, a changed config reaches it too (and picks the kernel it names) with the
    same result, and a broken one is refused by name."""
    monkeypatch.setenv("MAMBA_BACKENDS_CPU_NATIVE", "1")
    if not (native_conv.lib() is not None and native_gdn.available() and native_ssm.available()):
        pytest.skip("native kernels unavailable (no C compiler)")
    _, _, alt, kernel, alt_kernel = NATIVE[table]
    expected, calls = _run_native(table, monkeypatch)
    ours = [(name, a) for name, a in calls if name == kernel]
    assert ours, f"{kernel} did not run: {[n for n, _ in calls]}"
    struct_fields = {f for f, *_ in type(ours[0][1])._fields_}
    assert struct_fields & set(alt), f"no tunable of {alt} in {kernel}'s struct"
    for _, args in ours:
        for name in struct_fields & set(alt):
            assert getattr(args, name) == NATIVE_DEFAULTS[table][name]
    with tuning.override(table, alt, device="cpu"):
        actual, calls = _run_native(table, monkeypatch)
    ours = [(name, a) for name, a in calls if name == alt_kernel]
    assert ours, f"{alt_kernel} did not run under {alt}: {[n for n, _ in calls]}"
    for _, args in ours:
        for name in struct_fields & set(alt):
            assert getattr(args, name) == alt[name]
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-5, equal_nan=True)
    with tuning.override(table, {}, device="cpu"):
        with pytest.raises(TuningError, match=f"{table}.*{next(iter(NATIVE_FIELDS[table]))}"):
            _run_native(table, monkeypatch)
