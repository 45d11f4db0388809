"""The fastvid shard-set format in one place: extensions, manifest schema and version, key and name rules.

Writers (fastvid.store.writer, the events sharder), readers (fastvid.store.reader and the loaders),
`fastvid inspect` and `fastvid manifest` all take these rules from here, so they cannot drift apart.
Pure: no file I/O (fastvid.store.manifest reads and writes manifests).

A shard set is one directory (or URL prefix) per split:
    manifest.json          {"format": "fastvid-shards", "version": 1, "kind": "video"|"events", "split",
                            "num_samples", "classes", "shards": [{"name", "samples", "bytes", "sha256"}],
                            "failures": [{"source", "error"}], "options": {...}}
    <split>-000000.tar     WebDataset tar (<key>.<ext> members, keys without dots)
    <split>-000000.idx     DALI webdataset index (v1.2)
    <split>-000000.meta.json  what planning needs of each sample (fastvid.store.shardmeta): opening a set
                           reads one per shard, never one json per sample
    wids-index.json        shard list that webdataset's `wids.ShardListDataset` reads
"""

from __future__ import annotations

import os

import re

FORMAT = "fastvid-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
WIDS_INDEX_NAME = "wids-index.json"
# Kinds name themselves in the manifest; each registers its reader in fastvid.store.kinds.
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
REQUIRED_KEYS = ("format", "version", "kind", "split", "num_samples", "classes", "shards", "failures", "options")
SHARD_KEYS = ("name", "samples", "bytes", "sha256")
# Written by fastvid >= 0.1 (streaming store): the sha256 of the shard's index and metadata file, so a
# download of either is verified like the tar. Older sets lack them (their files are checked by structure).
OPTIONAL_SHARD_HASHES = ("index_sha256", "meta_sha256")

# Keys: no dots (webdataset splits a member name at the first dot) and no whitespace (DALI's index
# format is space-separated); short enough that `<key>.<ext>` fits the ustar 100-byte name field.
KEY_PATTERN = re.compile(r"^[^.\s]+$")
MAX_KEY_LEN = 90
SPLIT_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
SHARD_NAME_PATTERN = re.compile(r"^(?P<prefix>[A-Za-z0-9_]+(?:-n\d{3,})?)-(?P<index>\d{6})\.tar$")
PARTIAL_MANIFEST_PATTERN = re.compile(r"^manifest-n(\d{3,})\.json$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def check_key(key: str, where: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):  # fullmatch: no trailing newline
        raise ValueError(f"{where}: sample key {key!r} must be non-empty with no dots or whitespace")
    return key


def check_split(split: str) -> str:
    if not isinstance(split, str) or not SPLIT_PATTERN.fullmatch(split):  # fullmatch: no trailing newline
        raise ValueError(f"split {split!r}: use letters, digits and '_' only (it starts every shard name)")
    return split


def shard_prefix(split: str, node_rank: int = 0, num_nodes: int = 1) -> str:
    """Shard name prefix: `<split>` on one node, `<split>-n<rank>` per node of a multi-node job."""
    return f"{split}-n{node_rank:03d}" if num_nodes > 1 else split


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def partial_manifest_name(node_rank: int) -> str:
    return f"manifest-n{node_rank:03d}.json"


def index_name_for(tar_name: str) -> str:
    """`<stem>.idx` for `<stem>.tar` (the stem ends at the first dot, like webdataset keys)."""
    return tar_name.split(".", 1)[0] + ".idx"


def meta_name_for(tar_name: str) -> str:
    """`<stem>.meta.json` for `<stem>.tar`: the shard's per-sample planning metadata."""
    return tar_name.split(".", 1)[0] + META_SUFFIX


META_SUFFIX = ".meta.json"
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def plain_file_name(name, where: str, what: str = "shard name") -> str:
    """`name` read from a file (manifest, progress file) as a plain file name inside the set directory;
    ValueError naming `where` otherwise. Untrusted names must never reach outside the directory:
    no separators, no '.'/'..', no absolute paths, no NUL or other control characters, and no percent
    escapes (a name is joined into URLs, where `%2E%2E%2F` is `../` to the server)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or os.path.basename(name) != name
            or _PERCENT_ESCAPE.search(name)):
        raise ValueError(f"{where}: {what} {name!r} is not a plain file name inside the shard set directory "
                         "(the file was edited or is hostile); refusing to use it")
    return name


def validate_manifest(manifest, where: str = "manifest") -> dict:
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
    if not isinstance(manifest["kind"], str) or not KIND_PATTERN.match(manifest["kind"]):
        raise ValueError(f"{where}: 'kind' is {manifest['kind']!r}, expected a kind name such as 'video' or 'events'")
    if not isinstance(manifest["classes"], list) or not all(isinstance(c, str) for c in manifest["classes"]):
        raise ValueError(f"{where}: 'classes' must be a list of class names")
    if not isinstance(manifest["shards"], list):
        raise ValueError(f"{where}: 'shards' must be a list")
    if not isinstance(manifest["failures"], list):
        raise ValueError(f"{where}: 'failures' must be a list")
    if not isinstance(manifest["options"], dict):
        raise ValueError(f"{where}: 'options' must be an object")
    total = 0
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            raise ValueError(f"{where}: shard #{i} must be an object")
        for key in SHARD_KEYS:
            if key not in shard:
                raise ValueError(f"{where}: shard #{i} has no {key!r}")
        plain_file_name(shard["name"], where)
        for key in ("sha256",) + tuple(k for k in OPTIONAL_SHARD_HASHES if k in shard):
            if not isinstance(shard[key], str) or not SHA256_PATTERN.match(shard[key]):
                raise ValueError(f"{where}: shard #{i} ({shard['name']}) {key!r} must be 64 lowercase hex digits")
        for key in ("samples", "bytes"):
            if not isinstance(shard[key], int) or isinstance(shard[key], bool) or shard[key] < 0:
                raise ValueError(f"{where}: shard #{i} ({shard['name']}) {key!r} must be a non-negative integer")
        total += shard["samples"]
    if not isinstance(manifest["num_samples"], int) or total != manifest["num_samples"]:
        raise ValueError(f"{where}: num_samples is {manifest['num_samples']} but the shards hold {total}")
    return manifest


def wids_index(manifest: dict, name: str | None = None) -> dict:
    """The shard index webdataset's `wids.ShardListDataset` reads (shard URLs relative to the index file)."""
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1,
             "shardlist": [{"url": s["name"], "nsamples": s["samples"], "filesize": s["bytes"]}
                           for s in manifest["shards"] if s["samples"] > 0]}
    index["name"] = name or f"fastvid-{manifest['kind']}-{manifest['split']}"
    return index
