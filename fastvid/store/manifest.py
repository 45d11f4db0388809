"""The shard-set manifest (`OUT/manifest.json`): reading, validating, writing, listing shards.

A manifest says what a shard set holds:
{"format": "fastvid-shards", "version": 1, "kind": "video"|"events", "split", "num_samples",
 "classes": [names, index = label], "shards": [{"name", "samples", "bytes", "sha256", "index_sha256",
 "meta_sha256"}] (the last two: hashes of the shard's index and per-shard metadata file, in sets written
 since the streaming store),
 "failures": [{"source", "error"}], "options": {...}}
Multi-node jobs write partial manifests (`manifest-n<rank>.json`) that `fastvid manifest` merges.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fastvid.store.atomic import write_text_atomic
from fastvid.store.format import MANIFEST_NAME, WIDS_INDEX_NAME, validate_manifest, wids_index
from fastvid.store.tarindex import index_path_for


def load_manifest_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest (run `fastvid shard ...` first, or `fastvid manifest` to merge node parts)") from None
    return parse_manifest_text(text, str(path))


def parse_manifest_text(text: str, where: str) -> dict:
    """A validated manifest from the JSON text of `where` (a path or URL, named in errors)."""
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON ({exc})") from None
    return validate_manifest(manifest, where)  # shard names included: plain file names inside the set


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The validated manifest of shard set `out_dir` (a directory, or the manifest file itself)."""
    path = Path(out_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    elif not path.exists() and not path.name.endswith(".json"):
        raise FileNotFoundError(f"{out_dir}: shard set directory does not exist")
    return load_manifest_file(path)


def shard_files(out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(tar, idx) paths of every shard in the manifest, in manifest order; missing files are an error."""
    out_dir = Path(out_dir)
    if out_dir.is_file():
        out_dir = out_dir.parent
    manifest = read_manifest(out_dir)
    pairs = []
    for shard in manifest["shards"]:
        tar = out_dir / shard["name"]
        idx = index_path_for(tar)
        if not tar.exists():
            raise FileNotFoundError(f"{tar}: listed in {out_dir / MANIFEST_NAME} but missing")
        if not idx.exists():
            raise FileNotFoundError(f"{idx}: DALI index of {tar.name} is missing (recreate it with fastvid.store.tarindex.write_index)")
        pairs.append((tar, idx))
    return pairs


def write_wids_index(out_dir: str | os.PathLike, manifest: dict) -> Path:
    """OUT/wids-index.json: the shard list `wids.ShardListDataset(path)` reads (URLs relative to it)."""
    return write_json_atomic(wids_index(manifest), Path(out_dir) / WIDS_INDEX_NAME)


def write_json_atomic(data: dict, path: str | os.PathLike, default=None) -> Path:
    """Write JSON under a temporary name, then rename: readers never see a half-written file."""
    return write_text_atomic(json.dumps(data, indent=2, sort_keys=False, default=default) + "\n", path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
