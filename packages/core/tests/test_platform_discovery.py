"""Platform discovery through entry points, with fake distributions on sys.path."""

from __future__ import annotations

import threading

import pytest

from mamba_backends import platform as platform_mod
from mamba_backends.platform import (
    PlatformError,
    ReferencePlatform,
    discover_platform,
    get_current_platform,
)

PLATFORMS = """
from mamba_backends.platform import Platform

class Cpu(Platform):
    name = "fakecpu"

class Gpu(Platform):
    name = "fakegpu"
    device_type = "cuda"
    is_accelerator = True

class Npu(Platform):
    name = "fakenpu"
    device_type = "npu"
    is_accelerator = True

def cpu():
    return "{mod}.Cpu"

def gpu():
    return "{mod}.Gpu"

def npu():
    return "{mod}.Npu"

def absent():
    return None

def broken():
    raise RuntimeError("driver exploded")

def bad_path():
    return "{mod}_does_not_exist.Gpu"
"""


def _add(fake_dists, name, **eps):
    mod = f"{name}_mod"
    fake_dists(
        name,
        platforms={k: f"{mod}:{v}" for k, v in eps.items()},
        module=PLATFORMS.replace("{mod}", mod),
    )


def test_no_plugins_falls_back_to_reference(fake_dists):
    sel = discover_platform()
    assert isinstance(sel.platform, ReferencePlatform)
    assert sel.rule.startswith("fallback")


def test_cpu_plugin_is_chosen(fake_dists):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    sel = discover_platform()
    assert sel.platform.name == "fakecpu"
    assert "cpu platform" in sel.rule


def test_accelerator_wins_over_cpu(fake_dists):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    _add(fake_dists, "vgpu", fakegpu="gpu")
    sel = discover_platform()
    assert sel.platform.name == "fakegpu"
    assert sel.rule == "auto: accelerator 'fakegpu'"
    assert set(sel.candidates) == {"fakecpu", "fakegpu"}


def test_absent_hardware_is_not_a_candidate(fake_dists):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    _add(fake_dists, "vgpu", fakegpu="absent")
    assert discover_platform().platform.name == "fakecpu"


def test_two_accelerators_is_an_error_naming_both(fake_dists):
    _add(fake_dists, "vgpu", fakegpu="gpu")
    _add(fake_dists, "vnpu", fakenpu="npu")
    with pytest.raises(PlatformError) as err:
        discover_platform()
    assert "'fakegpu'" in str(err.value) and "'fakenpu'" in str(err.value)
    assert "MAMBA_BACKENDS_PLATFORM" in str(err.value)


def test_explicit_override_wins(fake_dists, monkeypatch):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    _add(fake_dists, "vgpu", fakegpu="gpu")
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "fakecpu")
    sel = discover_platform()
    assert sel.platform.name == "fakecpu"
    assert sel.rule.startswith("explicit")


def test_explicit_override_resolves_two_accelerators(fake_dists, monkeypatch):
    _add(fake_dists, "vgpu", fakegpu="gpu")
    _add(fake_dists, "vnpu", fakenpu="npu")
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "fakenpu")
    assert discover_platform().platform.name == "fakenpu"


def test_explicit_reference(fake_dists, monkeypatch):
    _add(fake_dists, "vgpu", fakegpu="gpu")
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "reference")
    assert isinstance(discover_platform().platform, ReferencePlatform)


def test_explicit_unknown_name_lists_installed(fake_dists, monkeypatch):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "tpu")
    with pytest.raises(PlatformError, match="'tpu'.*fakecpu, reference"):
        discover_platform()


@pytest.mark.parametrize("probe", ["broken", "bad_path"])
def test_broken_plugin_warns_and_falls_back(fake_dists, probe):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    _add(fake_dists, "vgpu", fakegpu=probe)
    with pytest.warns(RuntimeWarning, match="'fakegpu' failed to load") as record:
        sel = discover_platform()
    assert len(record) == 1
    assert sel.platform.name == "fakecpu"
    assert any("fakegpu" in s for s in sel.skipped)


@pytest.mark.parametrize(
    ("probe", "cause"), [("broken", "driver exploded"), ("bad_path", "cannot import")]
)
def test_broken_plugin_requested_explicitly_raises(fake_dists, monkeypatch, probe, cause):
    _add(fake_dists, "vgpu", fakegpu=probe)
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "fakegpu")
    with pytest.raises(PlatformError, match=cause):
        discover_platform()


def test_explicit_absent_hardware_raises(fake_dists, monkeypatch):
    _add(fake_dists, "vgpu", fakegpu="absent")
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "fakegpu")
    with pytest.raises(PlatformError, match="hardware is absent"):
        discover_platform()


def test_current_platform_is_lazy_and_cached(fake_dists, monkeypatch):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    calls = []
    real = platform_mod.discover_platform

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(platform_mod, "discover_platform", counting)
    assert calls == []  # nothing happens at import or fixture time
    p1 = get_current_platform()
    p2 = get_current_platform()
    assert p1 is p2 and p1.name == "fakecpu"
    assert len(calls) == 1
    platform_mod.reset_current_platform()
    assert get_current_platform() is not p1
    assert len(calls) == 2


def test_first_resolution_is_thread_safe(fake_dists, monkeypatch):
    _add(fake_dists, "vcpu", fakecpu="cpu")
    calls = []
    real = platform_mod.discover_platform
    gate = threading.Barrier(8)

    def slow(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(platform_mod, "discover_platform", slow)
    seen = []

    def worker():
        gate.wait()
        seen.append(get_current_platform())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({id(p) for p in seen}) == 1


def test_module_attribute_current_platform(fake_dists):
    import mamba_backends

    _add(fake_dists, "vcpu", fakecpu="cpu")
    assert mamba_backends.current_platform.name == "fakecpu"


SWITCH = """
from mamba_backends.backend import MambaBackend
from mamba_backends.platform import Platform

class BackendA(MambaBackend):
    name = "a.mamba2"
    mamba_type = "mamba2"
    ops_module = "mamba_backends.reference.ops"

class BackendB(MambaBackend):
    name = "b.mamba2"
    mamba_type = "mamba2"
    ops_module = "mamba_backends.reference.ops"

class PlatA(Platform):
    name = "plata"
    def get_mamba_backend_cls(self, mamba_type, selected_backend):
        return "switch_mod.BackendA" if mamba_type == "mamba2" else None

class PlatB(Platform):
    name = "platb"
    def get_mamba_backend_cls(self, mamba_type, selected_backend):
        return "switch_mod.BackendB" if mamba_type == "mamba2" else None

def a():
    return "switch_mod.PlatA"

def b():
    return "switch_mod.PlatB"
"""


def test_reset_current_platform_forgets_backend_and_ops_caches(fake_dists, monkeypatch):
    from mamba_backends import MambaBackend, get_mamba_backend, reset_current_platform

    fake_dists("switch", platforms={"plata": "switch_mod:a", "platb": "switch_mod:b"},
               module=SWITCH)  # fmt: skip
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "plata")
    first = get_mamba_backend("mamba2")
    assert first.get_name() == "a.mamba2"
    first.ops()
    assert first in MambaBackend._ops_cache
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "platb")
    reset_current_platform()
    assert MambaBackend._ops_cache == {}
    assert get_current_platform().name == "platb"
    assert get_mamba_backend("mamba2").get_name() == "b.mamba2"  # not the old platform's
