"""Structural rules of the package, checked on the source (ast), so a regression fails here.

The import graph (every `import` / `from ... import`, module level or inside functions) must show the
layers: the core (store, pipeline, train, kernels and the small shared modules) imports no kind and no
application module; the kinds (video, events) import the core but not each other and not the
application; the application (cli, data, benchmarks, doctor, quickstart, ...) sits on top. Project
modules never reach each other through importlib or __import__, the graph has no cycle between
packages, production code never imports the test-data generators, and shared constants have one
definition.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fastvid

ROOT = Path(fastvid.__file__).parent
CORE = ("fastvid.store", "fastvid.pipeline", "fastvid.train", "fastvid.kernels", "fastvid._gpu", "fastvid.locks",
        "fastvid.metrics", "fastvid.configs")
KINDS = ("fastvid.video", "fastvid.events")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.AST]:
    return {_module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in ROOT.rglob("*.py")}


def _imported(name: str, tree) -> set[str]:
    """Project modules `name` imports (resolving `from pkg import module` to the module when it is one)."""
    modules = _MODULES
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(name.split(".")[: -node.level + (1 if _is_package(name) else 0) or None] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "fastvid" or m.startswith("fastvid.")}


def _is_package(name: str) -> bool:
    return (ROOT.parent / Path(*name.split(".")) / "__init__.py").is_file()


_MODULES = _modules()
GRAPH = {name: _imported(name, tree) for name, tree in _MODULES.items()}


def _in(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_core_imports_no_kind_and_no_application_module():
    bad = [(m, dep) for m, deps in GRAPH.items() if _in(m, CORE) for dep in deps
           if not _in(dep, CORE) and dep != "fastvid"]
    assert bad == []


def test_kinds_import_the_core_only_not_each_other_nor_the_application():
    bad = []
    for m, deps in GRAPH.items():
        for kind in KINDS:
            if _in(m, (kind,)):
                bad += [(m, dep) for dep in deps if not _in(dep, CORE + (kind,)) and dep != "fastvid"]
    assert bad == []


def test_the_package_root_only_registers_the_kinds():
    assert GRAPH["fastvid"] == {"fastvid.video.kind", "fastvid.events.kind"}


def test_no_import_cycle_between_packages():
    # Collapse modules to their package (fastvid.video.loader -> fastvid.video) and look for cycles.
    def package(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else m

    edges = {}
    for m, deps in GRAPH.items():
        if m == "fastvid":
            continue  # the root registers the kinds: the one allowed edge from the top into them
        edges.setdefault(package(m), set()).update(package(d) for d in deps if package(d) != package(m) and d != "fastvid")
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(edges):
        visit(node)
    assert cycles == []


def test_project_modules_are_never_imported_through_importlib():
    offenders = []
    for name, tree in _MODULES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called not in ("import_module", "__import__"):
                continue
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("fastvid"):
                continue  # a named third-party module
            if name in ("fastvid._gpu", "fastvid.envreport", "fastvid.benchmarks.common"):
                continue  # these import optional third-party packages by name (require, `fastvid env`, versions)
            offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_importing_fastvid_is_cheap():
    code = "import sys, fastvid; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'numba', 'cupy', 'av'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_production_code_does_not_import_the_test_data_generators():
    # The generators serve tests, `fastvid quickstart` and benchmarks only.
    generators = {"fastvid.video.synth", "fastvid.events.detect.synth"}
    allowed = {"fastvid.video.synth", "fastvid.events.detect.synth", "fastvid.quickstart"}
    offenders = [m for m, deps in GRAPH.items()
                 if m not in allowed and not m.startswith("fastvid.benchmarks") and deps & generators]
    assert offenders == []


def test_shared_names_are_defined_once():
    counts = Counter()
    for tree in _MODULES.values():
        for node in tree.body:
            if isinstance(node, ast.Assign):
                counts.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.FunctionDef):
                counts[node.name] += 1
    for name in ("IMAGENET_MEAN", "IMAGENET_STD", "KINETICS_MEAN", "IMAGE_SUFFIXES", "SIZE_UNITS", "parse_size",
                 "_worker_init", "size_pair", "exact_rate", "VIDEO_EXTS"):
        assert counts[name] == 1, name
    assert counts["_pair"] == 0 and counts["as_frame_rate"] == 0


def test_kernels_live_inside_the_package():
    assert (ROOT / "kernels" / "crop.cu").is_file() and (ROOT / "kernels" / "events.cu").is_file()
    assert not (ROOT.parent / "kernels").exists()
    assert (ROOT / "video" / "boxes.py").is_file()
