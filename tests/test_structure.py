"""Structural rules of the package, checked on the source (ast), so a regression fails here:
no import cycle between the shard and events command modules, production code never imports the
test-data generator, and shared constants/helpers have one definition."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import fastvid

ROOT = Path(fastvid.__file__).parent


def _modules():
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in ROOT.rglob("*.py")}


def _imported(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_shard_and_events_commands_do_not_import_each_other():
    shard_cli = _imported(ast.parse((ROOT / "shard" / "cli.py").read_text()))
    events_cli = _imported(ast.parse((ROOT / "events" / "cli.py").read_text()))
    assert not any(n.startswith("fastvid.shard.cli") for n in events_cli)
    # shard/cli.py may load the events command lazily (it delegates `shard events`); events/cli.py must not need it.
    assert "fastvid.shard.options" in events_cli and "fastvid.shard.options" in shard_cli


def test_production_code_does_not_import_the_test_data_generator():
    # The generator serves tests, `fastvid quickstart` and benchmarks only.
    allowed = {ROOT / "synth.py", ROOT / "quickstart.py"}
    offenders = [str(p.relative_to(ROOT)) for p, tree in _modules().items()
                 if p not in allowed and "benchmarks" not in p.parts
                 and any(n == "fastvid.synth" or n.startswith("fastvid.synth.") for n in _imported(tree))]
    assert offenders == []


def test_shared_names_are_defined_once():
    counts = Counter()
    for tree in _modules().values():
        for node in tree.body:
            if isinstance(node, ast.Assign):
                counts.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.FunctionDef):
                counts[node.name] += 1
    for name in ("IMAGENET_MEAN", "IMAGENET_STD", "KINETICS_MEAN", "IMAGE_SUFFIXES", "SIZE_UNITS", "parse_size",
                 "_worker_init", "size_pair", "exact_rate"):
        assert counts[name] == 1, name
    assert counts["_pair"] == 0 and counts["as_frame_rate"] == 0


def test_kernels_live_inside_the_package():
    assert (ROOT / "kernels" / "crop.cu").is_file() and (ROOT / "kernels" / "events.cu").is_file()
    assert not (ROOT.parent / "kernels").exists()
    assert (ROOT / "data" / "boxes.py").is_file()
