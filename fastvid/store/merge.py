"""`fastvid manifest OUT`: merge the partial manifests of a multi-node shard job into OUT/manifest.json.

Each node of `fastvid shard ... --num-nodes N --node-rank I` writes `manifest-n<I>.json` next to
its own shards. Once all nodes are done (and their files are in one directory), this checks the
parts belong to the same job and writes the one manifest loaders read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastvid.store.format import PARTIAL_MANIFEST_PATTERN
from fastvid.store.format import MANIFEST_NAME
from fastvid.store.manifest import load_manifest_file, write_json_atomic, write_wids_index

# Keys that legitimately differ between the parts of one job.
PER_NODE_KEYS = ("node_rank", "num_samples", "shards", "failures")


def find_parts(out_dir: Path) -> list[Path]:
    return sorted((p for p in out_dir.iterdir() if PARTIAL_MANIFEST_PATTERN.match(p.name)),
                  key=lambda p: int(PARTIAL_MANIFEST_PATTERN.match(p.name).group(1)))


def merge_manifests(out_dir, *, allow_missing: bool = False) -> dict:
    """The merged manifest of all node parts in `out_dir` (written to OUT/manifest.json)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: shard set directory does not exist")
    paths = find_parts(out_dir)
    if not paths:
        raise FileNotFoundError(f"{out_dir}: no partial manifests (manifest-nNNN.json) to merge; "
                                "they are written by `fastvid shard ... --num-nodes N --node-rank I`")
    parts = [load_manifest_file(p) for p in paths]
    first, first_path = parts[0], paths[0]
    num_nodes = first["options"].get("num_nodes", len(parts))
    for part, path in zip(parts, paths):
        for key in set(first) | set(part):
            if key in PER_NODE_KEYS:
                continue
            if part.get(key) != first.get(key):
                raise ValueError(f"{path}: {key!r} differs from {first_path.name} ({part.get(key)!r} vs {first.get(key)!r}); "
                                 "the parts are not from the same job")
    ranks = [part.get("node_rank") for part in parts]
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"{out_dir}: duplicate node ranks among the partial manifests: {ranks}")
    missing = sorted(set(range(num_nodes)) - set(ranks))
    if missing and not allow_missing:
        raise ValueError(f"{out_dir}: partial manifests of nodes {missing} of {num_nodes} are missing "
                         "(wait for those nodes, copy their files here, or pass --allow-missing)")
    shards, failures, names = [], [], set()
    for part, path in zip(parts, paths):
        for shard in part["shards"]:
            if shard["name"] in names:
                raise ValueError(f"{path}: shard name {shard['name']} also appears in another part")
            tar = out_dir / shard["name"]
            if not tar.is_file():
                raise FileNotFoundError(f"{tar}: listed in {path.name} but not in {out_dir}")
            if tar.stat().st_size != shard["bytes"]:
                raise ValueError(f"{tar}: {tar.stat().st_size} bytes on disk, {shard['bytes']} in {path.name}")
            names.add(shard["name"])
            shards.append(shard)
        failures.extend(part["failures"])
    merged = {key: value for key, value in first.items() if key not in PER_NODE_KEYS}
    merged.update(num_samples=sum(s["samples"] for s in shards), shards=shards, failures=failures,
                  merged_from=[p.name for p in paths])
    ordered = {k: merged[k] for k in ("format", "version", "kind", "split", "num_samples", "classes", "shards", "failures", "options")}
    ordered.update({k: v for k, v in merged.items() if k not in ordered})
    write_json_atomic(ordered, out_dir / MANIFEST_NAME)
    write_wids_index(out_dir, ordered)
    return ordered


def add_arguments(parser) -> None:
    parser.add_argument("out", help="shard set directory holding the nodes' shards and manifest-nNNN.json files")
    parser.add_argument("--allow-missing", action="store_true", help="merge even if some nodes' parts are missing")


def run(args) -> int:
    merged = merge_manifests(args.out, allow_missing=args.allow_missing)
    print(f"manifest: merged {len(merged['merged_from'])} parts -> {Path(args.out) / MANIFEST_NAME}: "
          f"{merged['num_samples']} samples in {len(merged['shards'])} shards, {len(merged['failures'])} failures",
          file=sys.stderr)
    return 0
