"""Dependencies point one way: core names no vendor package and no plugin (they reach core
through entry points), and dead API and config stay gone."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
from pathlib import Path

import pytest

import mamba_backends
from mamba_backends import MambaBackend

CORE_SRC = Path(mamba_backends.__file__).resolve().parent
ROOT = CORE_SRC.parents[3]

#: A vendor or plugin module (``mamba_backends_cpu``) or distribution (``mamba-backends-cpu``);
#: core's own distribution is ``mamba-backends-core``.
VENDOR = re.compile(r"mamba[-_]backends[-_](?!core\b)[a-z0-9]+")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def vendor_mentions(source: str) -> list[str]:
    """Imports of, and strings naming, a vendor package in ``source`` (docstrings and comments
    are prose, not dependencies: they may give examples)."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if VENDOR.match(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and VENDOR.match(node.module):
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docs and VENDOR.search(node.value):
                found.append(f"string {node.value!r}")
    return found


def test_the_check_sees_what_it_must() -> None:
    bad = '''
"""Docstring: mamba_backends_cpu is an example here."""
import mamba_backends_cuda
from mamba_backends_vllm import routing_table  # a comment: mamba_backends_xpu
import mamba_backends.selector
def f():
    """mamba-backends-rocm in prose."""
    from mamba_backends_triton.ops import x
    return ("mamba-backends-xpu", "mamba-backends-core", "mamba_backends.platforms")
'''
    assert vendor_mentions(bad) == [
        "import mamba_backends_cuda",
        "from mamba_backends_vllm import ...",
        "from mamba_backends_triton.ops import ...",
        "string 'mamba-backends-xpu'",
    ]


def test_core_source_names_no_vendor_or_plugin() -> None:
    offenders = {}
    for path in sorted(CORE_SRC.rglob("*.py")):
        found = vendor_mentions(path.read_text())
        if found:
            offenders[str(path.relative_to(CORE_SRC))] = found
    assert offenders == {}, "core must reach vendors through entry points only"


def test_dead_api_is_gone() -> None:
    import mamba_backends.types as types_mod

    assert not hasattr(mamba_backends, "MambaType") and not hasattr(types_mod, "MambaType")
    assert not hasattr(MambaBackend, "supports")


def test_ruff_per_file_ignores_name_existing_paths() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = ROOT / "pyproject.toml"
    if not (ROOT / "packages").is_dir() or not pyproject.is_file():
        pytest.skip("not running from a source checkout")
    ruff = tomllib.loads(pyproject.read_text())["tool"]["ruff"]
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("build", "dist")]
        rel = Path(dirpath).relative_to(ROOT)
        files += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    for pattern in ruff["lint"].get("per-file-ignores", {}):
        assert any(fnmatch.fnmatch(f, pattern) for f in files), f"{pattern!r} matches nothing"
