"""The shard-set manifest (`OUT/manifest.json`): reading, validating, writing, listing shards.

A manifest says what a shard set holds:
{"format": "fastvid-shards", "version": 1, "kind": "video"|"events", "split", "num_samples",
 "classes": [names, index = label], "shards": [{"name", "samples", "bytes", "sha256"}],
 "failures": [{"source", "error"}], "options": {...}}
Multi-node jobs write partial manifests (`manifest-n<rank>.json`) that `fastvid manifest` merges.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fastvid.shard.atomic import write_text_atomic
from fastvid.shard.dali_index import index_path_for

FORMAT = "fastvid-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("video", "events")
REQUIRED_KEYS = ("format", "version", "kind", "split", "num_samples", "classes", "shards", "failures", "options")


def partial_manifest_name(node_rank: int) -> str:
    return f"manifest-n{node_rank:03d}.json"


def plain_file_name(name, where: str, what: str = "shard name") -> str:
    """`name` read from a file (manifest, progress file) as a plain file name inside the set directory;
    ValueError naming `where` otherwise. Untrusted names must never reach outside the directory:
    no separators, no '.'/'..', no absolute paths, no NUL or other control characters."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or os.path.basename(name) != name):
        raise ValueError(f"{where}: {what} {name!r} is not a plain file name inside the shard set directory "
                         "(the file was edited or is hostile); refusing to use it")
    return name


def validate_manifest(manifest: dict, where: str = "manifest") -> dict:
    """Check the structure of a manifest dict; raise ValueError naming `where` and the problem."""
    if not isinstance(manifest, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{where}: 'format' is {manifest.get('format')!r}, expected {FORMAT!r} (not a fastvid shard set?)")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{where}: unsupported manifest version {manifest.get('version')!r} (this fastvid reads {VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    if manifest["kind"] not in KINDS:
        raise ValueError(f"{where}: 'kind' is {manifest['kind']!r}, expected one of {KINDS}")
    if not isinstance(manifest["classes"], list):
        raise ValueError(f"{where}: 'classes' must be a list of class names")
    total = 0
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            raise ValueError(f"{where}: shard #{i} is not an object")
        for key in ("name", "samples", "bytes", "sha256"):
            if key not in shard:
                raise ValueError(f"{where}: shard #{i} has no {key!r}")
        plain_file_name(shard["name"], where)
        total += int(shard["samples"])
    if total != int(manifest["num_samples"]):
        raise ValueError(f"{where}: num_samples is {manifest['num_samples']} but the shards hold {total}")
    return manifest


def load_manifest_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest (run `fastvid shard ...` first, or `fastvid manifest` to merge node parts)") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    return validate_manifest(manifest, str(path))


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
            raise FileNotFoundError(f"{idx}: DALI index of {tar.name} is missing (recreate it with fastvid.shard.dali_index.write_index)")
        pairs.append((tar, idx))
    return pairs


def write_json_atomic(data: dict, path: str | os.PathLike, default=None) -> Path:
    """Write JSON under a temporary name, then rename: readers never see a half-written file."""
    return write_text_atomic(json.dumps(data, indent=2, sort_keys=False, default=default) + "\n", path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
