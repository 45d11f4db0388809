"""One shard-set reader: open a shard set once (read and validate its manifest once, check its shard names,
find every tar and index, fetching remote ones through the local cache) and hand it to the reader of
its `kind`.

    opened = open_files("s3://bucket/k400/train")            # OpenedSet: manifest, kind, local files
    video_set = open_shard_set("shards/k400/train")          # the video reader's ShardSet (kind "video")

A spec is a shard set directory or URL prefix (with manifest.json), a manifest.json address, one tar
address, a brace pattern (`dir/train-{000000..000009}.tar`), a `pipe:` command, or a list of these.
The reader of each kind is a registered `fastvid.store.kinds.KindReader` (fastvid.video.kind and
fastvid.events.kind register theirs).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from fastvid.store import tarindex
from fastvid.store import kinds, remote
from fastvid.store.format import MANIFEST_NAME, index_name_for


@dataclasses.dataclass(frozen=True)
class ShardFile:
    address: str          # as given or as listed (URL, path or pipe: command)
    tar: Path             # local file (the address itself, or its cached copy)
    idx: Path | None      # local DALI index, None when there is none (readers scan the tar)
    samples: int | None   # from the manifest, when there is one


@dataclasses.dataclass
class OpenedSet:
    spec: str                     # what the caller passed, for messages
    manifest: dict | None
    files: list[ShardFile]
    cache: object | None = None   # the ShardCache holding remote files (kept alive with the set)

    @property
    def kind(self) -> str | None:
        return self.manifest["kind"] if self.manifest is not None else None

    def pairs(self) -> list[tuple[Path, Path | None]]:
        return [(f.tar, f.idx) for f in self.files]


def _spec_text(spec) -> str:
    if isinstance(spec, (str, os.PathLike)):
        return os.fspath(spec)
    return ", ".join(os.fspath(s) for s in spec[:3]) + (" ..." if len(spec) > 3 else "")


def _is_set_address(address: str) -> bool:
    """A directory / URL prefix of a shard set (or its manifest.json) rather than a tar."""
    if remote.is_pipe(address):
        return False
    if address.endswith(".json"):
        return True
    if remote.is_remote(address):
        return not address.rstrip("/").endswith(".tar")
    return os.path.isdir(remote.local_path(address))


def _read_manifest(address: str) -> dict:
    from fastvid.store.manifest import parse_manifest_text

    data = remote.read_bytes(address)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{address}: not a manifest (not UTF-8 text)") from None
    return parse_manifest_text(text, address)


def open_files(spec, cache=None, *, missing_ok: bool = False) -> OpenedSet:
    """Find every shard of `spec` as local files (remote ones via `cache`, default: fastvid.store.cache.default_cache()).
    `missing_ok`: a local set's missing tar or index is left for the caller to report (`fastvid inspect`)."""
    if not isinstance(spec, (str, os.PathLike)):
        spec = list(spec)  # iterated more than once below
    text = _spec_text(spec)
    addresses = remote.expand(spec)
    if not addresses:
        raise ValueError("no shards given (expected a shard set directory or URL, or tar paths/URLs)")
    for address in addresses:
        proto = remote.scheme(address)
        if proto not in (None, "file"):
            remote._filesystem(address)  # unknown protocols fail here, naming the URL
    if len(addresses) == 1 and _is_set_address(addresses[0]):
        return _open_set_dir(addresses[0], cache, missing_ok)
    if any(_is_set_address(a) and not remote.is_remote(a) for a in addresses):
        raise ValueError(f"{text}: give one shard set directory, or a list of .tar files, not a mix")
    return _open_tar_list(addresses, text, cache)


def _cache_for(cache):
    if cache is not None:
        return cache
    from fastvid.store.cache import default_cache

    return default_cache()


def _open_set_dir(address: str, cache, missing_ok: bool = False) -> OpenedSet:
    if address.endswith(".json"):
        manifest_address, base = address, remote.parent(address)
    else:
        base = address.rstrip("/") if remote.is_remote(address) else address
        manifest_address = remote.join(base, MANIFEST_NAME)
    if not remote.is_remote(base) and not os.path.isdir(remote.local_path(base)):
        raise FileNotFoundError(f"{address}: shard set directory does not exist")
    try:
        manifest = _read_manifest(manifest_address)
    except remote.ShardSourceError:
        if not remote.is_remote(manifest_address):
            raise FileNotFoundError(f"{manifest_address}: no manifest (run `fastvid shard ...` first, or `fastvid "
                                    "manifest` to merge node parts)") from None
        raise
    files = []
    if remote.is_remote(base):
        cache = _cache_for(cache)
        for shard in manifest["shards"]:
            tar_address = remote.join(base, shard["name"])
            # Tagged with the shard's sha256: a set rewritten at the same URL never reuses stale copies.
            tag = str(shard["sha256"])[:16]
            idx = cache.fetch(remote.join(base, index_name_for(shard["name"])), tag=tag)
            tar = cache.fetch(tar_address, size_hint=shard["bytes"], tag=tag)
            files.append(ShardFile(tar_address, tar, idx, shard["samples"]))
    else:
        root = Path(remote.local_path(base))
        for shard in manifest["shards"]:
            tar = root / shard["name"]
            idx = tarindex.index_path_for(tar)
            if missing_ok:
                pass
            elif not tar.is_file():
                raise FileNotFoundError(f"{tar}: listed in {manifest_address} but missing")
            elif not idx.is_file():
                raise FileNotFoundError(f"{idx}: DALI index of {tar.name} is missing (recreate it with "
                                        "fastvid.store.tarindex.write_index)")
            files.append(ShardFile(str(tar), tar, idx, shard["samples"]))
    return OpenedSet(address, manifest, files, cache if remote.is_remote(base) else None)


def _open_tar_list(addresses: list[str], text: str, cache) -> OpenedSet:
    files = []
    used_cache = None
    for address in addresses:
        if not remote.is_remote(address):
            tar = Path(remote.local_path(address))
            if not tar.is_file():
                raise FileNotFoundError(f"{address}: shard does not exist")
            idx = tarindex.index_path_for(tar)
            files.append(ShardFile(address, tar, idx if idx.is_file() else None, None))
            continue
        used_cache = _cache_for(cache if cache is not None else used_cache)
        tar = used_cache.fetch(address)
        idx = tarindex.index_path_for(tar)
        if not idx.is_file():
            idx_address = None if remote.is_pipe(address) else remote.join(remote.parent(address), index_name_for(remote.basename(address)))
            if idx_address is not None and remote.exists(idx_address):
                idx = used_cache.fetch(idx_address)
            else:  # no index published: build it from the cached tar (DALI needs one)
                tarindex.write_index(tar, idx)
        files.append(ShardFile(address, tar, idx, None))
    manifest = None
    first = addresses[0]
    if not remote.is_pipe(first):
        manifest_address = remote.join(remote.parent(first), MANIFEST_NAME)
        if remote.exists(manifest_address):
            manifest = _read_manifest(manifest_address)
    return OpenedSet(text, manifest, files, used_cache)


def open_shard_set(spec, *, kind: str | None = None, cache=None):
    """Open `spec` once and read it with the reader of its manifest's kind (or `kind` for tar lists
    without a manifest); a `kind` that disagrees with the manifest is an error."""
    if kind is not None:
        kinds.reader_for(kind)  # unknown kinds fail here, naming the known ones
    opened = open_files(spec, cache)
    if kind is not None and opened.kind is not None and opened.kind != kind:
        raise ValueError(f"{opened.spec}: shard set holds {opened.kind!r} samples, this reader needs kind {kind!r}")
    return kinds.reader_for(opened.kind or kind or "video").open(opened)
