"""Reading event shard sets: segment index (key -> tar byte ranges, per-segment metadata) and random-access
segment reads.

The set is opened only through fastvid.store.reader (the one shard-set reader, which also accepts URLs and
brace patterns): one index and one per-shard metadata file per shard, so a SegmentRef carries what planning
needs of its segment (`meta`: t0, t1, recording, num_events, recording_t_end, label_times) without a read
of the segment's json. `SegmentRef.shard` is the shard's position in the opened set, what a loader hands
to fastvid.store.stream.ShardStream to get the tar's local file.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import zipfile
import zlib
from pathlib import Path

from fastvid.events.codec import EVENT_EXTS, META_EXT, decode_sample, events_field, parse_segment_key


def shard_set_files(shards) -> list[tuple[Path, Path]]:
    """(tar, idx) pairs of an event shard set: a directory or address with a manifest of kind "events", or a
    list of tar paths / (tar, idx) pairs."""
    if isinstance(shards, (str, os.PathLike)):
        from fastvid.store.reader import open_files

        opened = open_files(shards, kind="events")
        if opened.kind != "events":
            raise ValueError(f"{opened.spec}: manifest kind is {opened.kind!r}, not an event shard set")
        return _pairs(opened)
    from fastvid.store.tarindex import index_path_for

    return [(Path(p[0]), Path(p[1])) if isinstance(p, tuple) else (Path(p), index_path_for(Path(p))) for p in shards]


def _pairs(opened) -> list[tuple[Path, Path]]:
    from fastvid.store.tarindex import index_path_for

    opened.fetch_all()
    return [(tar, idx if idx is not None else index_path_for(tar)) for tar, idx in opened.pairs()]


def shard_set_options(shards) -> dict:
    """The writer's options of a shard set directory ({} for a list of tars)."""
    if not isinstance(shards, (str, os.PathLike)):
        return {}
    from fastvid.store.reader import open_files

    return (open_files(shards, tables=False).manifest or {}).get("options", {})


@dataclasses.dataclass(frozen=True)
class SegmentRef:
    """Where one segment sample lives: its tar and the (offset, size) of each field."""

    recording: str  # the sanitized recording name of the key
    segment: int
    key: str
    tar: str
    fields: dict  # ext -> (offset, size)
    shard: int = -1  # position of its tar in the opened set (-1: a tar list given as paths)
    meta: dict | None = dataclasses.field(default=None, compare=False)  # per-segment planning metadata


def opened_segments(opened) -> list[SegmentRef]:
    """The events reader of fastvid.store.reader (an OpenedSet of kind "events") -> sorted SegmentRefs.
    The event loaders read `SegmentRef.tar` directly, so a streamed (remote) set's tars are fetched here,
    all of them, until the loaders ask a ShardStream for them (see fastvid.store.stream)."""
    opened.fetch_all()
    tables = [(f.index, f.meta) for f in opened.files]
    return _segments(_pairs(opened), tables)


def index_segments(shards) -> list[SegmentRef]:
    """Every segment of an event shard set (dir or list of (tar, idx)/tar paths), sorted by
    (recording, segment)."""
    if isinstance(shards, (str, os.PathLike)):
        from fastvid.store.reader import open_files

        opened = open_files(shards, kind="events")
        if opened.kind != "events":
            raise ValueError(f"{opened.spec}: manifest kind is {opened.kind!r}, not an event shard set")
        return opened_segments(opened)
    return _segments(shard_set_files(shards))


def _segments(pairs, tables=None) -> list[SegmentRef]:
    from fastvid.store.tarindex import indexed_samples

    refs = []
    for shard, (tar, idx) in enumerate(pairs):
        index, meta = tables[shard] if tables is not None else (None, None)
        samples = index if index is not None else indexed_samples(tar, idx)
        for i, (key, fields) in enumerate(samples):
            parsed = parse_segment_key(key)
            if parsed is None:
                raise ValueError(f"{tar}: sample key {key!r} is not an event segment key (<recording>_sNNNNNN)")
            missing = ([] if events_field(fields) else [" or ".join(EVENT_EXTS)]) + ([] if META_EXT in fields else [META_EXT])
            if missing:
                raise ValueError(f"{tar}: sample {key!r} lacks {missing}")
            refs.append(SegmentRef(parsed[0], parsed[1], key, str(tar), fields, shard if tables is not None else -1,
                                   meta.record(i) if meta is not None else None))
    refs.sort(key=lambda r: (r.recording, r.segment))
    return refs


class SegmentReader:
    """Reads segment samples by byte offset (os.pread: safe to share between threads); keeps tars open."""

    def __init__(self):
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, tar: str) -> int:
        fd = self._fds.get(tar)
        if fd is None:
            with self._lock:
                fd = self._fds.get(tar)
                if fd is None:
                    fd = self._fds[tar] = os.open(tar, os.O_RDONLY)
        return fd

    def read_fields(self, ref: SegmentRef, exts=None) -> dict:
        """{ext: bytes} of the sample (only `exts` when given)."""
        fd = self._fd(ref.tar)
        out = {}
        for ext, (offset, size) in ref.fields.items():
            if exts is not None and ext not in exts:
                continue
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise ValueError(f"{ref.tar}: sample {ref.key!r} field {ext} at byte {offset} is cut short")
            out[ext] = data
        return out

    def read(self, ref: SegmentRef, columns: bool = False) -> dict:
        try:
            return decode_sample(self.read_fields(ref), columns)
        except (KeyError, ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            # Corrupt deflate data / zip structure raise zlib.error / BadZipFile, not ValueError.
            raise ValueError(f"{ref.tar}: cannot decode segment {ref.key!r} ({type(exc).__name__}: {exc})") from None

    def close(self):
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_segments(shards):
    """Yield {"events", "boxes", "meta"} of every segment of an event shard set, in recording and
    segment order (recordings by name)."""
    reader = SegmentReader()
    try:
        for ref in index_segments(shards):
            yield reader.read(ref)
    finally:
        reader.close()
