"""``mamba-backends info``: text and JSON, in process and as ``python -m``."""

from __future__ import annotations

import json
import subprocess
import sys

from mamba_backends import MAMBA_TYPES
from mamba_backends.cli import main
from mamba_backends.info import collect_info, format_info


def test_collect_info_with_fake_cpu_platform(fake_dists):
    fake_dists(
        "vcpu",
        platforms={"fakecpu": "vcpu_mod:probe"},
        module="""
        from mamba_backends.platform import Platform
        class P(Platform):
            name = "fakecpu"
            def get_mamba_backend_cls(self, mamba_type, selected_backend):
                if mamba_type == "short_conv":
                    return "mamba_backends.reference.backends.ReferenceShortConvBackend"
                return None
        def probe():
            return "vcpu_mod.P"
        """,
    )
    info = collect_info()
    assert info["platform"]["name"] == "fakecpu"
    assert info["platform"]["rule"] == "auto: cpu platform 'fakecpu'"
    assert list(info["backends"]) == list(MAMBA_TYPES)
    assert info["backends"]["short_conv"]["rule"] == "platform"
    assert info["backends"]["mamba2"] == {
        "backend": "reference.mamba2",
        "class": "mamba_backends.reference.backends.ReferenceMamba2Backend",
        "rule": "default",
    }
    text = format_info(info)
    assert "fakecpu" in text and "short_conv" in text and "platform" in text


def test_main_json(capsys):
    assert main(["info", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["backends"]) == set(MAMBA_TYPES)
    assert "mamba-backends-core" in out["packages"]


def test_python_m_info_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "mamba_backends", "info", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert all("backend" in out["backends"][t] for t in MAMBA_TYPES)
    proc = subprocess.run(
        [sys.executable, "-m", "mamba_backends", "info"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert proc.stdout.startswith("platform :")


def test_sections_come_from_entry_points_only(fake_dists):
    """With no installed package contributing, there is no section at all: core adds none of
    its own (no vLLM, no vendor)."""
    info = collect_info()
    assert info["sections"] == {}
    assert "vllm     :" not in format_info(info)
