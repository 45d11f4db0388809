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
import json
import os
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

from fastvid.events.codec import (EVENT_EXTS, EVENTS_EVB_EXT, META_EXT, decode_sample, decode_window, events_field,
                                  parse_segment_key)

_INDEX_CACHE = 4096  # parsed sample tables kept by a SegmentReader
_HEAD_BYTES = 4096  # first read of an indexed field: header + block table of a 500 ms segment in 5 ms blocks


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


def _pairs(opened, fetch: bool = True) -> list[tuple[Path, Path]]:
    """(tar, index) of every shard; `fetch`: a streamed set's tars fetched now (else where the cache will put them)."""
    from fastvid.store.tarindex import index_path_for

    if fetch:
        opened.fetch_all()
    return [(tar, idx if idx is not None else index_path_for(tar)) for tar, idx in opened.pairs()]


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


def opened_segments(opened, fetch: bool = True) -> list[SegmentRef]:
    """The events reader of fastvid.store.reader (an OpenedSet of kind "events") -> sorted SegmentRefs.
    `fetch`: fetch a streamed (remote) set's tars now, for readers of `SegmentRef.tar`; the event loader
    passes False and reads each tar through a ShardStream (SegmentReader(stream=...)) as its plan reaches it."""
    tables = [(f.index, f.meta) for f in opened.files]
    return _segments(_pairs(opened, fetch), tables)


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
    """Reads segment samples by byte offset (os.pread: safe to share between threads); keeps tars open.
    `stream` (a fastvid.store.stream.ShardStream): a segment's tar is its shard's local copy, waited for
    when the stream has not fetched it yet (`beyond_window`: see ShardStream.path); without one, the
    SegmentRef's tar is read as it is."""

    def __init__(self, stream=None, beyond_window: bool = False):
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._indexes: dict = {}  # (tar, key, ext) -> parsed BlockIndex / RepIndex
        self.stream, self.beyond_window = stream, beyond_window

    def _ref_fd(self, ref: SegmentRef) -> int:
        if self.stream is not None and ref.shard >= 0:
            return self._fd(str(self.stream.path(ref.shard, beyond_window=self.beyond_window)))
        return self._fd(ref.tar)

    def release(self, shard: int) -> None:
        """Close the file of a streamed shard the rank is done with (the cache may then delete it)."""
        if self.stream is None:
            return
        local = self.stream.local(shard)
        with self._lock:
            fd = self._fds.pop(str(local), None) if local is not None else None
        if fd is not None:
            os.close(fd)

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
        fd = self._ref_fd(ref)
        out = {}
        for ext, (offset, size) in ref.fields.items():
            if exts is not None and ext not in exts:
                continue
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise ValueError(f"{ref.tar}: sample {ref.key!r} field {ext} at byte {offset} is cut short")
            out[ext] = data
        return out

    def read_boxes(self, ref: SegmentRef, data: bytes | None = None, where: str | None = None) -> np.ndarray:
        """The segment's boxes (BOX_DTYPE) by time; empty when it has none. `data`: its boxes field read
        already (e.g. a byte range of a remote tar, named `where` in errors)."""
        from fastvid.events.codec import BOXES_EXT, decode_boxes
        from fastvid.events.io import empty_boxes

        if data is None and BOXES_EXT not in ref.fields:
            return empty_boxes()
        try:
            boxes = decode_boxes(data if data is not None else self.read_fields(ref, {BOXES_EXT})[BOXES_EXT])
        except ValueError as exc:
            raise ValueError(f"{where or ref.tar}: cannot decode the boxes of segment {ref.key!r} ({exc})") from None
        return boxes[np.argsort(boxes["t"], kind="stable")]

    def read(self, ref: SegmentRef, columns: bool = False) -> dict:
        try:
            return decode_sample(self.read_fields(ref), columns)
        except _DECODE_ERRORS as exc:
            raise _named(ref, exc) from None

    def _pread(self, ref: SegmentRef, ext: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of one field of the sample."""
        offset, size = ref.fields[ext]
        stop = min(stop, size)
        data = os.pread(self._ref_fd(ref), stop - start, offset + start)
        if len(data) != stop - start:
            raise ValueError(f"field {ext} at byte {offset + start} is cut short")
        return data

    def _indexed(self, ref: SegmentRef, ext: str, parse):
        """The parsed header + table of an indexed field (block layout or representation), read by its first bytes."""
        size = ref.fields[ext][1]
        head = self._pread(ref, ext, 0, _HEAD_BYTES)
        for _ in range(2):  # the table's end is known once the JSON header is in
            need = parse.table_end(head)
            if need <= len(head) or need > size:
                break
            head = self._pread(ref, ext, 0, need)
        return parse.parse(head, size)

    def read_window(self, ref: SegmentRef, t0: int | None, t1: int | None) -> dict:
        """Columns {"t", "x", "y", "p"} of the sample's events with t0 <= t < t1. In the block layout only the
        json, the block table and the window's blocks are read from the tar (a few percent of a segment for a
        50 ms window); older layouts read and decode the whole field. Errors name the tar and the sample."""
        from fastvid.events.blocks import BlockIndex

        try:
            if events_field(ref.fields) != EVENTS_EVB_EXT:
                return decode_window(self.read_fields(ref), t0, t1)
            key = (ref.tar, ref.key, EVENTS_EVB_EXT)
            index = self._indexes.get(key)
            if index is None:  # once per sample: windows of one segment share its json and block table
                meta = json.loads(self.read_fields(ref, {META_EXT})[META_EXT])
                index = self._indexed(ref, EVENTS_EVB_EXT, BlockIndex)
                index.check(meta.get("num_events"), meta.get("t0"))
                self._cache(key, index)
            k_lo, k_hi = index.block_range(t0, t1)
            a, b = index.byte_range(k_lo, k_hi)
            return index.decode(self._pread(ref, EVENTS_EVB_EXT, a, b), k_lo, k_hi, a, t0, t1)
        except _DECODE_ERRORS as exc:
            raise _named(ref, exc) from None

    def representation_index(self, ref: SegmentRef, ext: str):
        """The window table of the precomputed field `ext` (shape, number of windows), cached per sample."""
        from fastvid.events.precompute import RepIndex

        key = (ref.tar, ref.key, ext)
        index = self._indexes.get(key)
        if index is None:
            if ext not in ref.fields:
                raise ValueError(f"{ref.tar}: sample {ref.key!r} has no precomputed {ext} (it has {sorted(ref.fields)}); "
                                 "shard with --precompute to add it")
            try:
                index = self._indexed(ref, ext, RepIndex)
            except _DECODE_ERRORS as exc:
                raise _named(ref, exc) from None
            self._cache(key, index)
        return index

    def _cache(self, key, index) -> None:
        """Keep parsed block / window tables of the most recent samples (a few KB each)."""
        with self._lock:
            if len(self._indexes) >= _INDEX_CACHE:
                self._indexes.pop(next(iter(self._indexes)))
            self._indexes[key] = index

    def read_representation(self, ref: SegmentRef, ext: str, windows=None, out=None, out_zeroed: bool = False):
        """(n, C, H, W) uint8 of the precomputed representation `ext` (e.g. "stacked_histogram_w50000_b10.evr")
        for `windows` (indices of the segment's grid windows; None: all), reading only those windows' bytes.
        `out`: an array to write into instead (e.g. a slice of a float32 batch); out_zeroed: it is known to hold
        zeros (np.zeros), so sparse windows only scatter their nonzero cells."""
        index = self.representation_index(ref, ext)
        try:
            w = index.windows_of(windows)
            if not len(w):
                return index.decode(b"", w, 0, out)
            if index.codec == "none" and index.encoding == "dense" and out is not None and out.dtype == np.uint8 and out.flags.c_contiguous:
                return self._read_stored_windows(ref, ext, index, w, out)
            a, b = int(index.byte_offsets[w.min()]), int(index.byte_offsets[w.max() + 1])
            return index.decode(self._pread(ref, ext, a, b), w, a, out, out_zeroed)
        except (*_DECODE_ERRORS, IndexError) as exc:
            raise _named(ref, exc) from None

    def _read_stored_windows(self, ref: SegmentRef, ext: str, index, w, out):
        """Uncompressed windows straight from the tar into `out` (uint8): one read, no copy."""
        size = int(np.prod(index.shape))
        if out.shape != (len(w), *index.shape):
            raise ValueError(f"out has shape {out.shape}, the windows need {(len(w), *index.shape)}")
        offset = ref.fields[ext][0]
        for i, k in enumerate(w):
            if int(index.sizes[k]) != size or int(index.raw_sizes[k]) != size:
                raise ValueError(f"stored window {int(k)} holds {int(index.sizes[k])} bytes, its shape needs {size}")
            got = os.preadv(self._ref_fd(ref), [memoryview(out[i]).cast("B")], offset + int(index.byte_offsets[k]))
            if got != size:
                raise ValueError(f"field {ext} window {int(k)} is cut short")
        return out

    def close(self):
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Corrupt deflate data / zip structure raise zlib.error / BadZipFile, not ValueError.
_DECODE_ERRORS = (KeyError, ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile)


def _named(ref: SegmentRef, exc: BaseException) -> ValueError:
    """The one error line of a sample that cannot be decoded: the tar, the sample key, and what is wrong."""
    return ValueError(f"{ref.tar}: cannot decode segment {ref.key!r} ({type(exc).__name__}: {exc})")


def iter_segments(shards):
    """Yield {"events", "boxes", "meta"} of every segment of an event shard set, in recording and
    segment order (recordings by name)."""
    reader = SegmentReader()
    try:
        for ref in index_segments(shards):
            yield reader.read(ref)
    finally:
        reader.close()
