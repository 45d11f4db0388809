"""One shard-set reader: open a shard set once (read and validate its manifest once, check its shard names,
read every shard's index and per-shard metadata) and hand it to the reader of its `kind`.

    opened = open_files("s3://bucket/k400/train")            # OpenedSet: manifest, kind, shard tables
    video_set = open_shard_set("shards/k400/train")          # read by the manifest's kind: a video ShardSet

A spec is a shard set directory or URL prefix (with manifest.json), a manifest.json address, one tar
address, a brace pattern (`dir/train-{000000..000009}.tar`), a `pipe:` command, or a list of these.
The reader of each kind is a registered `fastvid.store.kinds.KindReader` (fastvid.video.kind and
fastvid.events.kind register theirs).

Opening costs O(shards), never one read per sample: each shard's `<stem>.idx` (where its samples are)
and `<stem>.meta.json` (what planning needs of them, fastvid.store.shardmeta) are read, in parallel for
URLs. A remote set whose manifest lists a tar is *streamed*: opening fetches only those small files
(verified like the tars), never a tar; loaders fetch the tars a rank reads, when it reads them, through
fastvid.store.stream.ShardStream. Tars named without a manifest (brace patterns, `pipe:` commands) are
fetched at open (their index and metadata come from the tar); a URL's copy is reused only while the
server reports the same size/ETag/date, and a `pipe:` command runs again at every open. A set written
before per-shard metadata existed still opens: the metadata is computed once from the sample jsons
(one message says so) and kept next to the shards, or in the cache directory when that is read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastvid.store import kinds, remote, shardmeta, tarindex
from fastvid.store.atomic import write_text_atomic
from fastvid.store.format import MANIFEST_NAME, index_name_for, meta_name_for

REMOTE_OPEN_THREADS = 16  # small files fetched at once when a remote set opens


@dataclasses.dataclass(frozen=True)
class ShardFile:
    address: str          # as given or as listed (URL, path or pipe: command)
    tar: Path             # local file: the address itself, its cached copy, or (streamed) where the cache puts it
    idx: Path | None      # local DALI index, None when there is none (readers scan the tar)
    samples: int | None   # from the manifest, when there is one
    streamed: bool = False              # the tar is fetched when a rank reads it (ShardStream), not at open
    bytes: int | None = None            # from the manifest
    sha256: str | None = None           # from the manifest
    tag: str | None = None              # the cache entry tag of its files
    index: list | None = dataclasses.field(default=None, repr=False, compare=False)  # [(key, {ext: (offset, size)})]
    meta: shardmeta.ShardMeta | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class OpenedSet:
    spec: str                     # what the caller passed, for messages
    manifest: dict | None
    files: list[ShardFile]
    cache: object | None = None   # the ShardCache holding remote files (kept alive with the set)

    @property
    def kind(self) -> str | None:
        return self.manifest["kind"] if self.manifest is not None else None

    @property
    def streamed(self) -> bool:
        """Whether some tar is fetched only when a rank reads it (a remote set with a manifest)."""
        return any(f.streamed for f in self.files)

    def pairs(self) -> list[tuple[Path, Path | None]]:
        return [(f.tar, f.idx) for f in self.files]

    def local_tar(self, i: int) -> Path:
        """Shard `i`'s local file, fetched now if it is streamed (and kept pinned while the set lives): random
        access outside a loader's ShardStream (tools, tests)."""
        f = self.files[i]
        if not f.streamed:
            return f.tar
        return self.cache.fetch(f.address, size_hint=f.bytes, tag=f.tag, sha256=f.sha256)

    def fetch_all(self) -> None:
        """Fetch every streamed tar now (pinned while the set lives): for readers that open `ShardFile.tar`
        themselves instead of asking a ShardStream."""
        for i, f in enumerate(self.files):
            if f.streamed:
                self.cache.fetch(f.address, size_hint=f.bytes, tag=f.tag, sha256=f.sha256)
                self.files[i] = dataclasses.replace(f, streamed=False)

    def read_ranges(self, i: int, spans: list[tuple[int, int]]) -> list[bytes]:
        """Byte ranges [(offset, size)] of shard `i` without fetching it: range requests while it is streamed
        (small fields such as labels, at open), preads of the local file otherwise."""
        f = self.files[i]
        return remote.read_ranges(f.address if f.streamed else str(f.tar), spans)

    def stream(self, order, window: int = 4):
        """A ShardStream over this set for a rank reading the shards `order` (fastvid.store.stream)."""
        from fastvid.store.stream import ShardStream

        return ShardStream(self, order, window=window)


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


def open_files(spec, cache=None, *, missing_ok: bool = False, tables: bool = True, kind: str | None = None) -> OpenedSet:
    """Find every shard of `spec` (remote ones via `cache`, default: fastvid.store.cache.default_cache()).
    `tables`: read each shard's index and metadata (False: the manifest and addresses only).
    `missing_ok`: a local set's missing tar or index is left for the caller to report (`fastvid inspect`).
    `kind`: the kind of a tar list without a manifest (for its metadata)."""
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
        opened = _open_set_dir(addresses[0], cache, missing_ok, tables)
    elif any(_is_set_address(a) and not remote.is_remote(a) for a in addresses):
        raise ValueError(f"{text}: give one shard set directory, or a list of .tar files, not a mix")
    else:
        opened = _open_tar_list(addresses, text, cache, tables)
    if tables and not missing_ok:
        _MetadataLoader(opened, opened.kind or kind).load()
    return opened


def _cache_for(cache):
    if cache is not None:
        return cache
    from fastvid.store.cache import default_cache

    return default_cache()


def _open_set_dir(address: str, cache, missing_ok: bool, tables: bool) -> OpenedSet:
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
    if remote.is_remote(base):
        cache = _cache_for(cache)
        records = [(remote.join(base, shard["name"]), shard) for shard in manifest["shards"]]
        files = _remote_tables(records, cache, tables)
        return OpenedSet(address, manifest, files, cache)
    root = Path(remote.local_path(base))
    files = []
    for shard in manifest["shards"]:
        tar = root / shard["name"]
        idx = tarindex.index_path_for(tar)
        if not missing_ok:
            if not tar.is_file():
                raise FileNotFoundError(f"{tar}: listed in {manifest_address} but missing")
            if not idx.is_file():
                raise FileNotFoundError(f"{idx}: DALI index of {tar.name} is missing (recreate it with "
                                        "fastvid.store.tarindex.write_index)")
        index = tarindex.indexed_samples(tar, idx) if tables and not missing_ok else None
        files.append(ShardFile(str(tar), tar, idx, shard["samples"], False, shard["bytes"], shard["sha256"], None, index))
    return OpenedSet(address, manifest, files, None)


def _remote_tables(records: list[tuple[str, dict]], cache, tables: bool) -> list[ShardFile]:
    """ShardFiles of remote tars the manifest lists, with their indexes (all fetched at once, checked against
    the manifest); the tars are left for ShardStream."""
    files = [ShardFile(address, cache.path_of(address, str(shard["sha256"])[:16]), None, shard["samples"], True,
                       shard["bytes"], shard["sha256"], str(shard["sha256"])[:16]) for address, shard in records]
    if not tables:
        return files
    jobs = []
    for address, shard in records:
        def check(data, where, shard=shard):
            problem = tarindex.index_problems(tarindex.parse_index(data, where), shard["samples"], shard["bytes"])
            if problem:
                raise ValueError(f"the index {problem}")

        jobs.append((remote.join(remote.parent(address), index_name_for(shard["name"])), shard.get("index_sha256"), check))
    blobs = read_verified(jobs)
    return [dataclasses.replace(f, index=tarindex.samples_of(tarindex.parse_index(data, job[0])))
            for f, data, job in zip(files, blobs, jobs)]


def read_verified(jobs: list[tuple[str, str | None, object]]) -> list[bytes]:
    """The contents of small remote files [(address, sha256 or None, check(data, address))], fetched
    concurrently; one that fails its sha256 or check is read once more, then refused naming its address.
    They are parsed in memory and never cached (a later open reads them again: O(shards) small reads)."""
    out = remote.read_many([address for address, _, _ in jobs])
    for attempt in range(2):
        again = []
        for i, ((address, sha256, check), data) in enumerate(zip(jobs, out)):
            if isinstance(data, BaseException):
                raise data  # the transport said what went wrong (missing, HTTP status, timeout)
            problem = _small_file_problem(address, data, sha256, check)
            if problem is not None:
                if attempt:
                    raise remote.ShardSourceError(f"{address}: {problem} (read twice; not used)")
                again.append(i)
        if not again:
            return out
        for i, data in zip(again, remote.read_many([jobs[i][0] for i in again])):
            out[i] = data
    return out


def _small_file_problem(address: str, data: bytes, sha256: str | None, check) -> str | None:
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            return f"sha256 {digest[:16]}... does not match the manifest's {sha256[:16]}..."
    try:
        check(data, address)
    except ValueError as exc:
        return str(exc).removeprefix(f"{address}: ")
    return None


def _open_tar_list(addresses: list[str], text: str, cache, tables: bool) -> OpenedSet:
    manifest = None
    first = addresses[0]
    if not remote.is_pipe(first):
        manifest_address = remote.join(remote.parent(first), MANIFEST_NAME)
        if remote.exists(manifest_address):
            manifest = _read_manifest(manifest_address)
    listed = {s["name"]: s for s in manifest["shards"]} if manifest is not None else {}
    files: list[ShardFile | None] = [None] * len(addresses)
    used_cache = None
    streamed = []
    for i, address in enumerate(addresses):
        if not remote.is_remote(address):
            tar = Path(remote.local_path(address))
            if not tar.is_file():
                raise FileNotFoundError(f"{address}: shard does not exist")
            idx = tarindex.index_path_for(tar)
            idx = idx if idx.is_file() else None
            index = tarindex.indexed_samples(tar, idx) if tables else None
            shard = listed.get(tar.name)
            files[i] = ShardFile(address, tar, idx, None, False, shard and shard["bytes"], shard and shard["sha256"],
                                 None, index)
            continue
        used_cache = _cache_for(cache if cache is not None else used_cache)
        shard = None if remote.is_pipe(address) else listed.get(remote.basename(address))
        if shard is not None and remote.parent(address) == remote.parent(first):
            streamed.append((i, address, shard))  # listed in the manifest beside it: streamed like a set
        else:
            files[i] = _fetch_unlisted(address, used_cache, tables)
    if streamed:
        for (i, _, _), f in zip(streamed, _remote_tables([(a, s) for _, a, s in streamed], used_cache, tables)):
            files[i] = f
    return OpenedSet(text, manifest, files, used_cache)


def _fetch_unlisted(address: str, cache, tables: bool) -> ShardFile:
    """A remote tar no manifest lists: fetched now (revalidated: a URL's copy is kept while the server reports
    the same size, ETag and date; a pipe: command runs at every open) and checked to be a tar."""
    if remote.is_pipe(address):
        tag = f"run{time.time_ns():x}"
    else:
        tag = hashlib.sha1(remote.fingerprint(address).encode()).hexdigest()[:16]
    tar = cache.fetch(address, tag=tag, check=tarindex.check_tar_file)
    idx = tarindex.index_path_for(tar)
    if not idx.is_file():
        idx_address = None if remote.is_pipe(address) else remote.join(remote.parent(address), index_name_for(remote.basename(address)))
        if idx_address is not None and remote.exists(idx_address):
            size = tar.stat().st_size

            def check(path):
                problem = tarindex.index_problems(tarindex.read_index(path), None, size)
                if problem:
                    raise ValueError(f"the index {problem}")

            idx = cache.fetch(idx_address, tag=tag, check=check)
        else:  # no index published: build it from the cached tar (DALI needs one)
            tarindex.write_index(tar, idx)
    index = tarindex.indexed_samples(tar, idx) if tables else None
    return ShardFile(address, tar, idx, None, False, None, None, tag, index)


class _MetadataLoader:
    """Per-shard metadata of every shard of an opened set: read from `<stem>.meta.json` (fetched and verified
    for remote sets), or computed once from the sample components for sets written before it existed."""

    def __init__(self, opened: OpenedSet, kind: str | None):
        self.opened = opened
        self.kind = kind
        self.computed: list[str] = []

    def load(self) -> None:
        if self.kind is None or self.kind not in kinds.kinds():
            return  # a tar list of unknown kind: its reader falls back to the sample jsons
        self.reader = kinds.reader_for(self.kind)
        files = self.opened.files
        listed = {s["name"]: s for s in (self.opened.manifest or {}).get("shards") or []}
        records = [listed.get(remote.basename(f.address)) if not remote.is_pipe(f.address) else None for f in files]
        metas: list = [None] * len(files)
        fetch = [i for i, (f, r) in enumerate(zip(files, records))
                 if f.index is not None and f.streamed and r is not None and "meta_sha256" in r]
        for i, meta in zip(fetch, self._fetch([(files[i], records[i]) for i in fetch])):
            metas[i] = meta
        rest = [i for i in range(len(files)) if i not in set(fetch)]
        if any(files[i].streamed for i in rest) and len(rest) > 1:  # computed from byte ranges over the network
            with ThreadPoolExecutor(min(REMOTE_OPEN_THREADS, len(rest)), thread_name_prefix="fastvid-open") as pool:
                for i, meta in zip(rest, pool.map(lambda i: self._one(files[i]), rest)):
                    metas[i] = meta
        else:
            for i in rest:
                metas[i] = self._one(files[i])
        self.opened.files[:] = [dataclasses.replace(f, meta=m) for f, m in zip(files, metas)]
        if self.computed:
            where = sorted(set(self.computed))
            print(f"{self.opened.spec}: {len(self.computed)} shard(s) have no per-shard metadata (<stem>.meta.json, "
                  f"written by fastvid since the streaming store): read each sample's json once to plan; kept in "
                  f"{', '.join(where[:2])}{' ...' if len(where) > 2 else ''} for the next runs", file=sys.stderr)

    def _fetch(self, pairs: list) -> list[shardmeta.ShardMeta]:
        """The listed metadata files of remote shards, fetched at once and verified (sha256, keys)."""
        jobs = []
        for f, record in pairs:
            keys = [key for key, _ in f.index]

            def check(data, where, keys=keys):
                shardmeta.parse(data, where, kind=self.kind, keys=keys)

            jobs.append((remote.join(remote.parent(f.address), meta_name_for(record["name"])), record["meta_sha256"], check))
        return [shardmeta.parse(data, job[0], kind=self.kind, keys=[key for key, _ in f.index])
                for (f, _), job, data in zip(pairs, jobs, read_verified(jobs))]

    def _one(self, f: ShardFile) -> shardmeta.ShardMeta | None:
        """A shard's metadata from beside a local tar, from a kept copy, or computed from its samples."""
        if f.index is None:
            return None
        keys = [key for key, _ in f.index]
        where_name = meta_name_for(remote.basename(f.address)) if not remote.is_pipe(f.address) else None
        if where_name is not None and not remote.is_remote(f.address):
            beside = Path(remote.local_path(f.address)).with_name(where_name)
            if beside.is_file():
                return shardmeta.parse(beside.read_bytes(), str(beside), kind=self.kind, keys=keys)
        kept = self._kept_path(f, where_name)
        if kept is not None and kept.is_file():
            try:
                return shardmeta.parse(kept.read_bytes(), str(kept), kind=self.kind, keys=keys)
            except ValueError:
                pass  # a stale or damaged copy: compute it again
        return self._compute(f, kept)

    def _kept_path(self, f: ShardFile, name: str | None) -> Path | None:
        """Where computed metadata is kept: beside a local tar whose directory is writable, else the cache."""
        if name is None:
            return None
        if not remote.is_remote(f.address):
            tar = Path(remote.local_path(f.address))
            if _writable(tar.parent):
                return tar.with_name(name)
        return self._cache_path(f, name)

    def _cache_path(self, f: ShardFile, name: str) -> Path:
        cache = self.opened.cache if self.opened.cache is not None else _cache_for(None)
        ident = hashlib.sha1(f"{f.address}|{f.sha256 or f.tag or _stamp(f.tar)}".encode()).hexdigest()[:16]
        return cache.side_path(f"{ident}-{name}")

    def _compute(self, f: ShardFile, kept: Path | None) -> shardmeta.ShardMeta:
        if f.streamed:  # only the byte ranges of the components needed, never the whole tar
            read_ranges = lambda spans: remote.read_ranges(f.address, spans)  # noqa: E731
        else:
            read_ranges = lambda spans: remote.read_ranges(str(f.tar), spans)  # noqa: E731
        records = shardmeta.compute_records(self.reader, f.index, read_ranges, f.address)
        doc = shardmeta.build(self.kind, remote.basename(f.address), records)
        text = shardmeta.dumps(doc)
        places = [kept] if kept is not None else []
        if kept is not None and kept.parent != self._cache_path(f, kept.name).parent:
            places.append(self._cache_path(f, kept.name))  # the set's directory refused the write (read-only)
        for place in places:
            try:
                write_text_atomic(text, place)
                self.computed.append(str(place.parent))
                break
            except OSError:
                continue
        else:
            self.computed.append("memory only (nowhere writable)" if places else "memory only (a pipe: command)")
        return shardmeta.ShardMeta(doc["keys"], doc["columns"])


def _writable(directory: Path) -> bool:
    """Whether files can be created in `directory`: a probe write answers what os.access cannot (read-only
    mounts, network file systems, root)."""
    probe = directory / f".fastvid-write-probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
        return f"{st.st_size}-{st.st_mtime_ns}"
    except OSError:
        return ""


def open_shard_set(spec, *, kind: str | None = None, cache=None):
    """Open `spec` once and read it with the reader of its manifest's kind (or `kind` for tar lists
    without a manifest, which name no kind: there `kind` is required); a `kind` that disagrees with the
    manifest is an error."""
    if kind is not None:
        kinds.reader_for(kind)  # unknown kinds fail here, naming the known ones
    else:
        # A tar list names no kind unless a manifest sits beside it: find out from the manifest and addresses
        # alone, before every shard's index is read (for remote tars, fetched).
        _kind_of(open_files(spec, cache, tables=False))
    opened = open_files(spec, cache, kind=kind)
    if kind is not None and opened.kind is not None and opened.kind != kind:
        raise ValueError(f"{opened.spec}: shard set holds {opened.kind!r} samples, this reader needs kind {kind!r}")
    return kinds.reader_for(opened.kind or kind).open(opened)


def _kind_of(opened: OpenedSet) -> str:
    if opened.kind is None:
        raise ValueError(f"{opened.spec}: these shards have no manifest.json naming their kind; pass kind= (one of "
                         f"{', '.join(sorted(kinds.kinds()))}) to open a tar list")
    return opened.kind
