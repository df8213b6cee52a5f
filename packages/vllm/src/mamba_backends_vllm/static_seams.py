"""Resolve the seam manifest against vLLM's sources without importing (or installing) vLLM.

``python -m mamba_backends_vllm.static_seams vllm-0.33.0-*.whl`` (or a folder that holds the
``vllm`` package, e.g. a site-packages) reads the sources with :mod:`ast` and checks, for the
seams whose ``versions`` range holds the sources' version:

- every :class:`~mamba_backends_vllm.seams.Seam`: the module file exists and the symbol is
  defined or imported at module level (imports inside ``vllm`` are followed to their
  definition); ``Class.attr`` is a method, property or assigned class attribute of the class or
  of one of its bases inside vLLM; ``params`` are parameters of the function; some call of the
  symbol in the module passes every keyword in ``call_keywords``;
- every rebound kernel of an active route: the layer module calls it, and each call binds the
  spec's signature of our op (:mod:`mamba_backends.reference`; the conformance kit holds every
  backend's signature to the spec's);
- every :class:`~mamba_backends_vllm.seams.SourceCheck`, and the GDN metadata's dataclass fields.

It imports no vLLM module, so it can check a vLLM that cannot be installed here (the CUDA wheel
on a CPU machine). What it cannot see: attributes created at run time (``setattr``, instance
attributes outside the source checks) and what a function does beyond its text.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamba_backends_vllm import seams as manifest
from mamba_backends_vllm import versions

logger = logging.getLogger(__name__)

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class SourceTree:
    """vLLM's ``.py`` files, from a wheel (zip) or from a folder that holds ``vllm/``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_file():
            self._zip = zipfile.ZipFile(self.path)
            self._names = set(self._zip.namelist())
        elif (self.path / "vllm").is_dir():
            self._names = set()
        else:
            raise FileNotFoundError(f"{path}: neither a wheel nor a folder holding vllm/")

    def read(self, relpath: str) -> str | None:
        """The text of ``relpath`` (``vllm/x/y.py``), or None when it is absent."""
        if self._zip is not None:
            if relpath not in self._names:
                return None
            return self._zip.read(relpath).decode("utf-8")
        f = self.path / relpath
        return f.read_text(encoding="utf-8") if f.is_file() else None

    def module_file(self, module: str) -> str | None:
        """``vllm/x/y.py`` or ``vllm/x/y/__init__.py`` for ``vllm.x.y`` (None when absent)."""
        base = module.replace(".", "/")
        for rel in (f"{base}.py", f"{base}/__init__.py"):
            if self.read(rel) is not None:
                return rel
        return None

    def version(self) -> str:
        """``__version__`` from ``vllm/_version.py`` (setuptools-scm writes it into the wheel)."""
        text = self.read("vllm/_version.py")
        if text is not None:
            for node in ast.parse(text).body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                    names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                    if "__version__" in names:
                        return str(node.value.value)
        raise ValueError(f"{self.path}: no vllm/_version.py with __version__")


@dataclass(frozen=True)
class Found:
    """Where a name was resolved: ``node`` is None for a module or a name from outside vLLM."""

    module: str
    node: ast.AST | None
    kind: str  # "def", "class", "assign", "module" or "external"


class Resolver:
    """Module-level names and class attributes of the sources, followed through imports."""

    def __init__(self, tree: SourceTree) -> None:
        self.tree = tree
        self._parsed: dict[str, tuple[str, ast.Module] | None] = {}

    def parse(self, module: str) -> tuple[str, ast.Module] | None:
        """``(text, tree)`` of a vLLM module, or None when its file is absent."""
        if module not in self._parsed:
            rel = self.tree.module_file(module)
            text = self.tree.read(rel) if rel is not None else None
            self._parsed[module] = None if text is None else (text, ast.parse(text, str(rel)))
        return self._parsed[module]

    def _is_package(self, module: str) -> bool:
        rel = self.tree.module_file(module)
        return rel is not None and rel.endswith("__init__.py")

    def toplevel(self, module: str) -> dict[str, ast.stmt]:
        """Names bound at module level (inside ``if``/``try``/``with`` too, not in functions)."""
        parsed = self.parse(module)
        out: dict[str, ast.stmt] = {}
        if parsed is not None:
            for stmt in _flat(parsed[1].body):
                for name in _bound_names(stmt):
                    out[name] = stmt
        return out

    def lookup(self, module: str, name: str, depth: int = 0) -> Found | str:
        """Resolve ``module.name`` to its definition; an error string when it is missing."""
        if depth > 20:
            return f"{module}:{name}: import cycle"
        if self.parse(module) is None:
            return f"module {module} has no file in the sources"
        stmt = self.toplevel(module).get(name)
        if stmt is None:
            if self._is_package(module) and self.parse(f"{module}.{name}") is not None:
                return Found(f"{module}.{name}", None, "module")
            return f"{module} defines no {name!r} at module level"
        if isinstance(stmt, ast.ImportFrom):
            alias = next(a for a in stmt.names if (a.asname or a.name) == name)
            src = _absolute(module, stmt.module, stmt.level, self._is_package(module))
            if src != "vllm" and not src.startswith("vllm."):
                return Found(src, None, "external")
            if self.parse(f"{src}.{alias.name}") is not None and alias.name not in self.toplevel(
                src
            ):
                return Found(f"{src}.{alias.name}", None, "module")
            return self.lookup(src, alias.name, depth + 1)
        if isinstance(stmt, ast.Import):
            alias = next(a for a in stmt.names if (a.asname or a.name.partition(".")[0]) == name)
            target = alias.name if alias.asname else alias.name.partition(".")[0]
            inside = target == "vllm" or target.startswith("vllm.")
            return Found(target, None, "module" if inside else "external")
        kind = (
            "class"
            if isinstance(stmt, ast.ClassDef)
            else "def"
            if isinstance(stmt, _DEFS)
            else "assign"
        )
        return Found(module, stmt, kind)

    def resolve(self, module: str, symbol: str) -> Found | str:
        """Resolve ``module:symbol`` with a dotted ``symbol`` (``Class.method``)."""
        first, *rest = symbol.split(".")
        found = self.lookup(module, first)
        for part in rest:
            if isinstance(found, str):
                return found
            found = self.attribute(found, part)
        return found

    def attribute(self, found: Found, name: str, depth: int = 0) -> Found | str:
        """``name`` on a resolved module or class (class bases inside vLLM are searched)."""
        if found.kind == "module":
            return self.lookup(found.module, name)
        if not isinstance(found.node, ast.ClassDef) or depth > 20:
            return f"{found.module}: cannot look up {name!r} inside a {found.kind}"
        cls = found.node
        for stmt in _flat(cls.body):
            if isinstance(stmt, _DEFS) and stmt.name == name:
                kind = "class" if isinstance(stmt, ast.ClassDef) else "def"
                return Found(found.module, stmt, kind)
            if isinstance(stmt, ast.Assign | ast.AnnAssign) and name in _bound_names(stmt):
                if isinstance(stmt, ast.AnnAssign) and stmt.value is None:
                    continue  # an annotation alone creates no class attribute
                return Found(found.module, stmt, "assign")
        for base in self.bases(found):
            hit = self.attribute(base, name, depth + 1)
            if not isinstance(hit, str):
                return hit
        return f"{found.module}:{cls.name} (and its bases in vLLM) has no attribute {name!r}"

    def bases(self, found: Found) -> Iterator[Found]:
        """The class's bases that resolve to classes inside vLLM."""
        assert isinstance(found.node, ast.ClassDef)
        for expr in found.node.bases:
            dotted = _dotted(expr)
            if dotted is None:
                continue
            hit = self.resolve(found.module, dotted)
            if isinstance(hit, Found) and hit.kind == "class":
                yield hit

    def class_fields(self, found: Found) -> set[str]:
        """Annotated names in the class body and its vLLM bases (dataclass fields)."""
        assert isinstance(found.node, ast.ClassDef)
        names = {
            s.target.id
            for s in _flat(found.node.body)
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
        }
        for base in self.bases(found):
            names |= self.class_fields(base)
        return names


def _flat(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a body, descending into ``if``/``try``/``with`` blocks (not defs)."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If | ast.With | ast.AsyncWith):
            yield from _flat(stmt.body)
            yield from _flat(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Try):
            yield from _flat(stmt.body)
            for handler in stmt.handlers:
                yield from _flat(handler.body)
            yield from _flat(stmt.orelse)
            yield from _flat(stmt.finalbody)


def _bound_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, _DEFS):
        return [stmt.name]
    if isinstance(stmt, ast.Import):
        return [a.asname or a.name.partition(".")[0] for a in stmt.names]
    if isinstance(stmt, ast.ImportFrom):
        return [a.asname or a.name for a in stmt.names if a.name != "*"]
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, ast.AnnAssign):
        targets = [stmt.target]
    names: list[str] = []
    for t in targets:
        elts = t.elts if isinstance(t, ast.Tuple | ast.List) else [t]
        names += [e.id for e in elts if isinstance(e, ast.Name)]
    return names


def _absolute(module: str, target: str | None, level: int, is_package: bool) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, target] if target else parts)


def _dotted(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        head = _dotted(expr.value)
        return f"{head}.{expr.attr}" if head else None
    return None


def _params(node: ast.AST) -> set[str] | None:
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    a = node.args
    return {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of the bare name ``name`` (how the layers call their module-global kernels)."""
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
    ]


@dataclass
class Report:
    """What :func:`check` found: the sources' version, the checks that passed, the problems."""

    source: str
    version: str
    resolved: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        head = (
            f"vLLM {self.version} ({self.source}): {len(self.resolved)} checks pass, "
            f"{len(self.problems)} fail"
        )
        return [head, *(f"FAIL {p}" for p in self.problems)]


def _spec_signature(op: str) -> inspect.Signature:
    from mamba_backends import reference

    return inspect.signature(getattr(reference, op))


def check_seam(r: Resolver, seam: manifest.Seam) -> str | None:
    """None when ``seam`` resolves in the sources, else what is wrong."""
    found = r.resolve(seam.module, seam.symbol)
    if isinstance(found, str):
        return f"{seam.name}: {found} (used for: {seam.why})"
    if seam.params:
        have = _params(found.node) if found.node is not None else None
        if have is None:
            return f"{seam.name}: expected a function with {seam.params}, got a {found.kind}"
        missing = [p for p in seam.params if p not in have]
        if missing:
            return f"{seam.name}: no parameter {missing} (used for: {seam.why})"
    if seam.call_keywords:
        parsed = r.parse(seam.module)
        assert parsed is not None
        calls = _calls(parsed[1], seam.symbol)
        want = set(seam.call_keywords)
        if not any(want <= {k.arg for k in c.keywords} for c in calls):
            lines = [c.lineno for c in calls]
            return (
                f"{seam.name}: no call passes {sorted(want)} (calls at lines {lines}; "
                f"used for: {seam.why})"
            )
    return None


def check_route_calls(
    r: Resolver,
    route: manifest.KernelRoute,
    signature: Callable[[str], inspect.Signature] = _spec_signature,
) -> list[str]:
    """Each rebound kernel is called in the layer module, and each call binds our op."""
    parsed = r.parse(route.layer_module)
    if parsed is None:
        return [f"{route.layer_module}: no file in the sources"]
    problems = []
    for sym, op in route.kernels:
        calls = _calls(parsed[1], sym)
        if not calls:
            problems.append(f"{route.layer_module} no longer calls {sym}")
        sig = signature(op)
        for call in calls:
            kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
            try:
                sig.bind(*([None] * len(call.args)), **kwargs)
            except TypeError as e:
                problems.append(f"{route.layer_module}:{sym} (line {call.lineno}) -> {op}: {e}")
    return problems


def check_source(r: Resolver, sc: manifest.SourceCheck) -> str | None:
    """None when the function's source holds the text, else what is wrong."""
    found = r.resolve(sc.module, sc.qualname)
    if isinstance(found, str):
        return f"{sc.name}: {found} (why: {sc.why})"
    parsed = r.parse(found.module)
    if parsed is None or found.node is None:
        return f"{sc.name}: no source (a {found.kind})"
    segment = ast.get_source_segment(parsed[0], found.node) or ""
    if sc.text not in segment:
        return f"{sc.name}: text not found (why: {sc.why})"
    return None


def check(path: str | Path, version: str | None = None) -> Report:
    """Check every manifest entry that applies to the sources' version (or ``version``)."""
    tree = SourceTree(path)
    v = version or tree.version()
    r = Resolver(tree)
    report = Report(str(path), v)

    def record(name: str, problem: str | None) -> None:
        (report.problems.append(problem) if problem else report.resolved.append(name))

    for seam in manifest.all_seams(v):
        record(seam.name, check_seam(r, seam))
    for route in manifest.active_routes():
        if versions.version_in(route.versions, v):
            problems = check_route_calls(r, route)
            report.problems += problems
            if not problems:
                report.resolved.append(f"{route.layer_module}: calls bind our ops")
    for sc in manifest.source_checks(v):
        record(sc.name, check_source(r, sc))
    gdn_md = r.resolve(f"{manifest._B}.gdn_attn", "GDNAttentionMetadata")
    if isinstance(gdn_md, str):
        report.problems.append(gdn_md)
    else:
        missing = set(manifest.GDN_METADATA_FIELDS) - r.class_fields(gdn_md)
        record(
            "GDNAttentionMetadata fields",
            f"GDNAttentionMetadata lacks fields {sorted(missing)}" if missing else None,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: check a wheel or a folder; exit status 1 when anything fails to resolve."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a vLLM wheel, or a folder that holds the vllm package")
    p.add_argument("--version", help="check as this vLLM version (default: the sources')")
    p.add_argument(
        "--platform",
        help="also fail unless the version lies in SUPPORTED_VLLM[PLATFORM] (what this verifies)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list the checks that pass")
    args = p.parse_args(argv)
    report = check(args.source, args.version)
    if args.platform is not None:
        spec = versions.SUPPORTED_VLLM.get(args.platform)
        if spec is None or not versions.version_in(spec, report.version):
            report.problems.append(
                f"vLLM {report.version} is outside SUPPORTED_VLLM[{args.platform!r}] ({spec})"
            )
    out: list[Any] = report.lines()
    if args.verbose:
        out += [f"ok   {name}" for name in report.resolved]
    sys.stdout.write("\n".join(out) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
