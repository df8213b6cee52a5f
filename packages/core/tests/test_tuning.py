"""The tuning lookup over vendor-owned JSON tables, with fake distributions on sys.path."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mamba_backends._resolve as resolve_mod
from mamba_backends import tuning
from mamba_backends.tuning import TuningError, clear_tuning_cache, configs, lookup

Vendor = Callable[..., Path]


def table(op: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"op": op, "configs": list(entries)}


def entry(device: str, when: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    return {"device": device, "when": when or {}, "config": config}


@pytest.fixture
def vendor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vendor]:
    """``vendor(name, {op: table or raw text})``: a fake distribution ``name`` whose entry point
    ``name`` of group ``mamba_backends.tuning`` names a package ``<name>_tuning`` holding
    ``<op>.json``. Only fake distributions are visible; the tuning cache starts empty."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(tuning.ENV_DIR, raising=False)

    def only_fake(group: str) -> list[md.EntryPoint]:
        eps = []
        for dist in md.distributions(path=[str(root)]):
            eps += [ep for ep in dist.entry_points if ep.group == group]
        return sorted(eps, key=lambda ep: ep.name)

    monkeypatch.setattr(resolve_mod, "entry_points", only_fake)
    written: list[str] = []

    def add(name: str, tables: dict[str, Any], package: str | None = None) -> Path:
        pkg = package or f"{name}_tuning"
        info = root / f"{name}-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text(f"[mamba_backends.tuning]\n{name} = {pkg}\n")
        folder = root / pkg
        if package is None:
            folder.mkdir()
            (folder / "__init__.py").write_text("")
            for op, data in tables.items():
                text = data if isinstance(data, str) else json.dumps(data)
                (folder / f"{op}.json").write_text(text)
        written.append(pkg)
        importlib.invalidate_caches()
        return folder

    clear_tuning_cache()
    yield add
    clear_tuning_cache()
    for mod in written:
        sys.modules.pop(mod, None)


@pytest.fixture
def env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``env_dir({op: table})``: a folder of JSON named by ``MAMBA_BACKENDS_TUNING_DIR``."""

    def make(tables: dict[str, Any], name: str = "override") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for op, data in tables.items():
            (folder / f"{op}.json").write_text(json.dumps(data))
        monkeypatch.setenv(tuning.ENV_DIR, str(folder))
        return folder

    return make


# ------------------------------------------------------------------ precedence and matching


def test_exact_device_then_vendor_default_then_default(vendor: Vendor) -> None:
    vendor(
        "vgpu",
        {
            "scan": table(
                "scan",
                entry("default", BLOCK=16),
                entry("cuda:default", BLOCK=32),
                entry("cuda:sm90", BLOCK=128),
            )
        },
    )
    assert lookup("scan", "cuda:sm90") == {"BLOCK": 128}
    assert lookup("scan", "cuda:sm80") == {"BLOCK": 32}
    assert lookup("scan", "hip:gfx942") == {"BLOCK": 16}
    assert lookup("scan", "cpu") == {"BLOCK": 16}


def test_exact_device_entry_that_does_not_match_falls_through(vendor: Vendor) -> None:
    vendor(
        "vgpu",
        {
            "scan": table(
                "scan", entry("cuda:sm90", {"N": [128, None]}, BLOCK=128), entry("default", BLOCK=8)
            )
        },
    )
    assert lookup("scan", "cuda:sm90", N=256) == {"BLOCK": 128}
    assert lookup("scan", "cuda:sm90", N=64) == {"BLOCK": 8}


def test_first_matching_entry_wins_and_ranges_are_inclusive(vendor: Vendor) -> None:
    vendor(
        "v",
        {
            "op": table(
                "op",
                entry("cpu", {"N": [None, 64]}, pick="small"),
                entry("cpu", {"N": [65, 128]}, pick="mid"),
                entry("cpu", {"N": [100, None]}, pick="large-overlapping"),
                entry("cpu", {}, pick="any"),
            )
        },
    )
    assert lookup("op", "cpu", N=1)["pick"] == "small"
    assert lookup("op", "cpu", N=64)["pick"] == "small"
    assert lookup("op", "cpu", N=65)["pick"] == "mid"
    assert lookup("op", "cpu", N=128)["pick"] == "mid"  # not the later overlapping one
    assert lookup("op", "cpu", N=129)["pick"] == "large-overlapping"
    assert lookup("op", "cpu")["pick"] == "any"  # a missing key never holds


def test_exact_conditions_are_typed(vendor: Vendor) -> None:
    vendor(
        "v",
        {
            "op": table(
                "op",
                entry("cpu", {"dtype": "bfloat16", "varlen": True}, pick="bf16-varlen"),
                entry("cpu", {"W": 4}, pick="w4"),
                entry("cpu", {"W": [1, 8]}, pick="range"),
                entry("default", {}, pick="fallback"),
            )
        },
    )
    assert lookup("op", "cpu", dtype="bfloat16", varlen=True)["pick"] == "bf16-varlen"
    assert lookup("op", "cpu", dtype="bfloat16", varlen=1)["pick"] == "fallback"  # 1 is no bool
    assert lookup("op", "cpu", dtype="float16", varlen=True)["pick"] == "fallback"
    assert lookup("op", "cpu", W=4)["pick"] == "w4"
    assert lookup("op", "cpu", W=3)["pick"] == "range"
    assert lookup("op", "cpu", W=True)["pick"] == "fallback"  # a bool is not a number
    assert lookup("op", "cpu", W="4")["pick"] == "fallback"


def test_no_match_names_op_device_and_keys(vendor: Vendor) -> None:
    vendor("v", {"op": table("op", entry("cuda:sm90", {"N": [1, 64]}, BLOCK=1))})
    with pytest.raises(TuningError) as err:
        lookup("op", "hip:gfx942", N=32)
    msg = str(err.value)
    assert "'op'" in msg and "'hip:gfx942'" in msg and "'N': 32" in msg
    assert "hip:default" in msg and "package 'v'" in msg
    assert isinstance(err.value, LookupError)
    with pytest.raises(TuningError, match="'cuda:sm90'.*'N': 65"):
        lookup("op", "cuda:sm90", N=65)
    with pytest.raises(TuningError, match="no table file"):
        lookup("unknown_op", "cpu")


def test_lookup_returns_a_fresh_copy(vendor: Vendor) -> None:
    vendor("v", {"op": table("op", entry("cpu", sizes=[1, 2], flag=True))})
    first = lookup("op", "cpu")
    first["flag"] = False
    first["sizes"].append(3)
    assert lookup("op", "cpu") == {"sizes": [1, 2], "flag": True}


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"op": "other", "configs": []}), "'op' is 'other'"),
        (json.dumps([]), "expected an object"),
        (json.dumps({"op": "op", "configs": {}}), "'configs' must be a list"),
        (json.dumps({"op": "op", "configs": [], "extra": 1}), "expected an object"),
        (json.dumps(table("op", {"device": "cpu"})), "configs[0]: 'config' must be"),
        (json.dumps(table("op", entry("cpu"), {"config": {}})), "configs[1]: 'device' must"),
        (json.dumps(table("op", {"device": "cpu", "config": {}, "conifg": {}})), "unknown"),
        (json.dumps(table("op", entry("cpu", {"N": [1, 2, 3]}))), "configs[0]: when['N']"),
        (json.dumps(table("op", entry("cpu", {"N": [9, 1]}))), "min > max"),
        (json.dumps(table("op", entry("cpu", {"N": [True, 1]}))), "when['N']"),
        (json.dumps(table("op", entry("cpu", {"N": 1.5}))), "when['N']"),
        (json.dumps(table("op", {**entry("cpu"), "note": 3})), "'note' must be"),
        ('{"op": "op", "op": "op", "configs": []}', "appears twice"),
    ],
)
def test_bad_schema_names_file_and_entry(vendor: Vendor, text: str, fragment: str) -> None:
    vendor("vbad", {"op": text})
    with pytest.raises(TuningError) as err:
        lookup("op", "cpu")
    assert "package 'vbad'" in str(err.value) and "op.json" in str(err.value)
    assert fragment in str(err.value)


def test_duplicate_across_packages_names_both(vendor: Vendor) -> None:
    vendor("vone", {"op": table("op", entry("cuda:sm90", {"N": [1, 64]}, BLOCK=1))})
    vendor("vtwo", {"op": table("op", entry("cuda:sm90", {"N": [1, 64]}, BLOCK=2))})
    with pytest.raises(TuningError) as err:
        lookup("op", "cuda:sm90", N=8)
    msg = str(err.value)
    assert "package 'vone'" in msg and "package 'vtwo'" in msg and "defined twice" in msg


def test_duplicate_within_one_file(vendor: Vendor) -> None:
    vendor("v", {"op": table("op", entry("cpu", {"a": 1, "b": 2}), entry("cpu", {"b": 2, "a": 1}))})
    with pytest.raises(TuningError, match=r"configs\[0\] and .*configs\[1\]"):
        lookup("op", "cpu")


def test_packages_with_distinct_entries_merge_in_entry_point_order(vendor: Vendor) -> None:
    vendor("vb", {"op": table("op", entry("cpu", {"N": [1, 10]}, pick="vb"))})
    vendor("va", {"op": table("op", entry("cpu", {"N": [5, 20]}, pick="va"))})
    assert lookup("op", "cpu", N=6)["pick"] == "va"  # 'va' sorts first
    assert lookup("op", "cpu", N=2)["pick"] == "vb"
    assert configs("op") == [("cpu", {"pick": "va"}), ("cpu", {"pick": "vb"})]


def test_unimportable_package_is_skipped_with_a_warning(
    vendor: Vendor, caplog: pytest.LogCaptureFixture
) -> None:
    vendor("vgone", {}, package="vgone_not_installed")
    vendor("vok", {"op": table("op", entry("cpu", pick="ok"))})
    with caplog.at_level(logging.WARNING, logger="mamba_backends.tuning"):
        assert lookup("op", "cpu") == {"pick": "ok"}
    assert "vgone_not_installed" in caplog.text


# ------------------------------------------------------------------ sources, cache, laziness


def test_env_dir_takes_precedence(vendor: Vendor, env_dir: Callable[..., Path]) -> None:
    vendor(
        "v",
        {"op": table("op", entry("cuda:sm90", BLOCK=64), entry("cuda:default", BLOCK=32))},
    )
    assert lookup("op", "cuda:sm90") == {"BLOCK": 64}
    env_dir({"op": table("op", entry("cuda:sm90", BLOCK=256))})  # same (device, when): allowed
    assert lookup("op", "cuda:sm90") == {"BLOCK": 256}  # noticed without clearing the cache
    assert lookup("op", "cuda:sm80") == {"BLOCK": 32}  # the packages still serve the rest
    assert configs("op") == [
        ("cuda:sm90", {"BLOCK": 256}),
        ("cuda:sm90", {"BLOCK": 64}),
        ("cuda:default", {"BLOCK": 32}),
    ]


def test_env_dir_errors_name_the_file(
    vendor: Vendor, env_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    vendor("v", {"op": table("op", entry("cpu", BLOCK=1))})
    folder = env_dir({"op": {"op": "op", "configs": [{"device": "cpu"}]}})
    with pytest.raises(TuningError, match="MAMBA_BACKENDS_TUNING_DIR folder .*op.json"):
        lookup("op", "cpu")
    monkeypatch.setenv(tuning.ENV_DIR, str(folder / "missing"))
    with pytest.raises(TuningError, match="is not a folder"):
        lookup("op", "cpu")


def test_tables_are_cached_until_cleared(vendor: Vendor) -> None:
    folder = vendor("v", {"op": table("op", entry("cpu", BLOCK=1))})
    assert lookup("op", "cpu") == {"BLOCK": 1}
    (folder / "op.json").write_text(json.dumps(table("op", entry("cpu", BLOCK=2))))
    assert lookup("op", "cpu") == {"BLOCK": 1}  # no file IO per lookup
    clear_tuning_cache()
    assert lookup("op", "cpu") == {"BLOCK": 2}


def test_packages_are_imported_lazily_once(vendor: Vendor) -> None:
    vendor("vlazy", {"op": table("op", entry("cpu", BLOCK=1))})
    assert "vlazy_tuning" not in sys.modules
    lookup("op", "cpu")
    assert "vlazy_tuning" in sys.modules
    sys.modules["vlazy_tuning"].marker = 1  # type: ignore[attr-defined]
    lookup("op", "cpu")
    assert sys.modules["vlazy_tuning"].marker == 1


def test_a_malformed_table_of_another_op_does_not_break_this_one(vendor: Vendor) -> None:
    vendor("v", {"good": table("good", entry("cpu", BLOCK=1)), "bad": "{"})
    assert lookup("good", "cpu") == {"BLOCK": 1}
    with pytest.raises(TuningError):
        lookup("bad", "cpu")
    assert tuning.ops() == ["bad", "good"]


def test_configs_filters_by_prefix(vendor: Vendor) -> None:
    vendor(
        "v",
        {
            "op": table(
                "op",
                entry("default", BLOCK=1),
                entry("cuda:sm90", BLOCK=2),
                entry("hip:gfx942", BLOCK=3),
                entry("hip:gfx950", {"N": [1, 8]}, BLOCK=4),
            )
        },
    )
    assert configs("op", "hip:") == [("hip:gfx942", {"BLOCK": 3}), ("hip:gfx950", {"BLOCK": 4})]
    assert [d for d, _ in configs("op")] == ["default", "cuda:sm90", "hip:gfx942", "hip:gfx950"]
    assert configs("nothing") == []


def test_debug_log_names_the_chosen_entry(vendor: Vendor, caplog: pytest.LogCaptureFixture) -> None:
    vendor("v", {"op": table("op", entry("cpu", {"N": [1, 8]}, BLOCK=1), entry("cpu", BLOCK=2))})
    with caplog.at_level(logging.DEBUG, logger="mamba_backends.tuning"):
        lookup("op", "cpu", N=9)
    assert "op.json configs[1]" in caplog.text and "'N': 9" in caplog.text


# ------------------------------------------------------------------ override()


def test_override_beats_env_and_packages_and_is_undone(
    vendor: Vendor, env_dir: Callable[..., Path]
) -> None:
    vendor("v", {"op": table("op", entry("cpu", BLOCK=1))})
    env_dir({"op": table("op", entry("cpu", BLOCK=2))})
    with tuning.override("op", {"BLOCK": 3}):
        assert lookup("op", "cpu") == {"BLOCK": 3}
        with tuning.override("op", {"BLOCK": 4}, device="cpu", when={"N": [10, None]}):
            assert lookup("op", "cpu", N=10) == {"BLOCK": 4}
            assert lookup("op", "cpu", N=9) == {"BLOCK": 3}
        assert lookup("op", "cpu", N=10) == {"BLOCK": 3}
        assert configs("op") == [("cpu", {"BLOCK": 2}), ("cpu", {"BLOCK": 1})]
    assert lookup("op", "cpu") == {"BLOCK": 2}


def test_override_device_follows_the_search_order(vendor: Vendor) -> None:
    vendor("v", {"op": table("op", entry("default", BLOCK=1))})
    with tuning.override("op", {"BLOCK": 9}, device="cuda:default"):
        assert lookup("op", "cuda:sm90") == {"BLOCK": 9}
        assert lookup("op", "hip:gfx942") == {"BLOCK": 1}
    with tuning.override("other", {"BLOCK": 9}):
        assert lookup("op", "cuda:sm90") == {"BLOCK": 1}


def test_override_is_validated(vendor: Vendor) -> None:
    with pytest.raises(TuningError, match="when"):
        with tuning.override("op", {"BLOCK": 1}, when={"N": [3, 1]}):
            pass


# ------------------------------------------------------------------ the resolved-entry memo


def test_resolved_entries_follow_overrides_env_and_clear(
    vendor: Vendor, env_dir: Callable[..., Path]
) -> None:
    folder = vendor("v", {"op": table("op", entry("cpu", {"N": [1, 64]}, BLOCK=1))})
    assert lookup("op", "cpu", N=8) == {"BLOCK": 1}  # resolved and memoised
    g0 = tuning.generation()
    with tuning.override("op", {"BLOCK": 2}):
        assert tuning.generation() > g0
        assert lookup("op", "cpu", N=8) == {"BLOCK": 2}
    assert lookup("op", "cpu", N=8) == {"BLOCK": 1}  # the exit forgot the override's answer
    env_dir({"op": table("op", entry("cpu", BLOCK=3))})
    assert lookup("op", "cpu", N=8) == {"BLOCK": 3}
    os.environ.pop(tuning.ENV_DIR)
    assert lookup("op", "cpu", N=8) == {"BLOCK": 1}
    (folder / "op.json").write_text(json.dumps(table("op", entry("cpu", BLOCK=4))))
    clear_tuning_cache()
    assert lookup("op", "cpu", N=8) == {"BLOCK": 4}


def test_memo_keys_keep_types_apart_and_tolerate_unhashable_values(vendor: Vendor) -> None:
    vendor("v", {"op": table("op", entry("cpu", {"W": 1}, pick="one"), entry("default", pick="d"))})
    assert lookup("op", "cpu", W=1)["pick"] == "one"
    assert lookup("op", "cpu", W=True)["pick"] == "d"  # True == 1 as a dict key, not here
    assert lookup("op", "cpu", W=1.0)["pick"] == "one"  # a float equal to the int matches
    assert lookup("op", "cpu", W=[1])["pick"] == "d"  # type: ignore[arg-type]
