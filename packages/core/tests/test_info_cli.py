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


def _fake_meta_dist(root, extras):  # type: ignore[no-untyped-def]
    """A ``mamba-backends`` meta distribution with ``extras``, first on sys.path."""
    info = root / "mamba_backends-9.9.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", "Name: mamba-backends", "Version: 9.9"]
    lines += [f"Provides-Extra: {e}" for e in extras]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_absent_section_flag_gives_an_install_line_not_argparse_noise(fake_dists, tmp_path, capsys):
    """`info --vllm` without the plugin: one line naming what is installed and the install
    command of the meta package's extra of that name (it works from a clone after the build)."""
    _fake_meta_dist(tmp_path / "site", ["cpu", "vllm"])
    assert main(["info", "--vllm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not err.startswith("usage:")
    assert "no installed package contributes an info section named 'vllm'" in err
    assert "installed sections: (none)" in err
    assert 'pip install --find-links dist "mamba-backends[vllm]"' in err
    assert "nox -s build" in err


def test_absent_section_by_name_gives_the_same_line(fake_dists, tmp_path, capsys):
    _fake_meta_dist(tmp_path / "site", ["vllm"])
    assert main(["info", "--section", "vllm"]) == 2
    err = capsys.readouterr().err
    assert 'pip install --find-links dist "mamba-backends[vllm]"' in err


def test_absent_section_that_is_no_extra_gets_no_made_up_install_line(fake_dists, capsys):
    assert main(["info", "--section", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "info section named 'nosuch'" in err and "pip install" not in err


def test_forced_unknown_platform_is_a_message_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("MAMBA_BACKENDS_PLATFORM", "bogus")
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamba-backends info: MAMBA_BACKENDS_PLATFORM='bogus' names no ")
    assert "Traceback" not in err


def test_plugin_loggers_come_from_entry_points(fake_dists):
    import importlib.metadata as md

    from mamba_backends.info import plugin_logger_names

    fake_dists("vplug", platforms={"vplug": "vplug_mod.probe:path"})
    root = next(p for p in sys.path if p.endswith("site"))
    assert plugin_logger_names(md.distributions(path=[root])) == ["vplug_mod"]


def test_cli_logging_shows_plugin_info_lines_and_hides_core_noise(tmp_path):
    """A plugin's INFO line (a first-use build) shows; core's per-case INFO lines and other
    libraries' INFO lines do not; warnings of all do."""
    site = tmp_path / "site"
    info = site / "vplug-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vplug\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[mamba_backends.platforms]\nvplug = vplug_mod:p\n")
    script = (
        "import logging\n"
        "from mamba_backends.cli import configure_logging\n"
        "configure_logging(False)\n"
        "logging.getLogger('vplug_mod.native').info('building native kernels (first use)')\n"
        "logging.getLogger('vplug_mod.native').info('vplug_mod: built in 1 s')\n"
        "logging.getLogger('mamba_backends.testing.runner').info('case noise')\n"
        "logging.getLogger('otherlib').info('other noise')\n"
        "logging.getLogger('otherlib').warning('other warning')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": str(site)},
    )
    assert "INFO vplug_mod.native: building native kernels (first use)" in proc.stderr
    assert "INFO: vplug_mod: built in 1 s" in proc.stderr  # the name is not said twice
    assert "WARNING otherlib: other warning" in proc.stderr
    assert "noise" not in proc.stderr
