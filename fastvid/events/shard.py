"""Event shards: GEN1 recordings cut into fixed-duration segments, one WebDataset sample per segment.

A sample (key ``<recording>_s<segment:06d>``) holds
* ``events.npz``: the segment's events, compact: timestamps delta-encoded (the first one relative
  to the segment start t0) in the smallest unsigned type that fits, x/y as uint16, polarities
  bit-packed, each column deflate-compressed (level 1 by default; 0 stores them) in an .npz, so
  ``np.load`` reads it;
* ``boxes.npy``: the boxes (BOX_DTYPE) whose timestamp falls in the segment;
* ``json``: {"recording", "segment", "t0", "t1", "sensor_size": [W, H], "num_events", "num_boxes", "source"}.

Segments are half-open [t0, t1) on the recording clock (see fastvid.events.segments), so every event
and box lands in exactly one sample. Writing goes through fastvid.shard.writer.write_shard_set
(atomic tars, DALI index, manifest with ``kind: "events"``, failures, resume). The writer shuffles
samples over shards; readers find them again through the DALI index (key -> byte offsets), and
`iter_segments` yields them in recording and segment order.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

from fastvid.events import io as evio
from fastvid.events import segments as seglib
from fastvid.events.types import EVENT_DTYPE, GEN1_SENSOR_SIZE

GEN1_CLASSES = ["car", "pedestrian"]
FORMATS = ("gen1",)
EVENTS_EXT = "events.npz"
BOXES_EXT = "boxes.npy"
META_EXT = "json"
_SEGMENT_KEY = re.compile(r"^(?P<rec>.+)_s(?P<seg>\d{6})$")


# ------------------------------------------------------------------------------ sample coding


def _smallest_uint(max_value: int):
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"value {max_value} does not fit in 64 bits")


def encode_events(events: np.ndarray, t0: int, compress_level: int = 1) -> bytes:
    """Compact, compressed bytes of sorted `events` (EVENT_DTYPE) of a segment starting at t0."""
    t = events["t"].astype(np.int64)
    if len(t) and t[0] < t0:
        raise ValueError(f"event at t={int(t[0])} is before the segment start {t0}")
    dt = np.diff(t, prepend=np.int64(t0))
    dt_type = _smallest_uint(int(dt.max()) if len(dt) else 0)
    arrays = {
        "dt": dt.astype(dt_type),
        "x": events["x"].astype(np.uint16),
        "y": events["y"].astype(np.uint16),
        "p": np.packbits(events["p"].astype(np.uint8) & 1),
        "n": np.array(len(events), np.int64),
    }
    # An .npz (np.load reads it) written with a fast deflate level: level 1 packs these columns
    # nearly as well as numpy's default (6) at several times the speed.
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be 0 (stored) to 9, got {compress_level}")
    method = zipfile.ZIP_DEFLATED if compress_level > 0 else zipfile.ZIP_STORED
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method, compresslevel=compress_level or None) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def decode_event_columns(data: bytes, t0: int) -> dict:
    """encode_events bytes -> contiguous columns {"t": int64, "x": int16, "y": int16, "p": int8}
    (the layout the representation kernels read, so loaders skip the structured-array copies)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        n = int(z["n"])
        t = np.cumsum(z["dt"], dtype=np.int64)
        t += int(t0)
        # x/y are < 2**14 (DAT packing), so the uint16 storage reinterprets as int16 without a copy.
        return {"t": t, "x": z["x"].view(np.int16), "y": z["y"].view(np.int16),
                "p": np.unpackbits(z["p"], count=n).view(np.int8)}


def decode_events(data: bytes, t0: int) -> np.ndarray:
    """Inverse of encode_events: EVENT_DTYPE array with absolute timestamps."""
    cols = decode_event_columns(data, t0)
    out = np.empty(len(cols["t"]), EVENT_DTYPE)
    for name, col in cols.items():
        out[name] = col
    return out


def encode_boxes(boxes: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(boxes, evio.BOX_DTYPE), allow_pickle=False)
    return buf.getvalue()


def decode_boxes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_sample(fields: dict, columns: bool = False) -> dict:
    """{ext: bytes} of one sample -> {"events", "boxes", "meta"}; events as EVENT_DTYPE, or as a
    dict of columns with `columns=True`."""
    meta = json.loads(fields[META_EXT])
    decode = decode_event_columns if columns else decode_events
    return {
        "events": decode(fields[EVENTS_EXT], meta["t0"]),
        "boxes": decode_boxes(fields[BOXES_EXT]) if BOXES_EXT in fields else evio.empty_boxes(),
        "meta": meta,
    }


# ------------------------------------------------------------------------------------ listing


@dataclasses.dataclass(frozen=True)
class SegmentItem:
    """One segment of one recording to be encoded (or a recording that failed while listing)."""

    key: str
    source: str
    recording: str
    dat_path: str
    bbox_path: str | None
    segment: int
    t0: int
    t1: int
    sensor_size: tuple[int, int]
    stamp: tuple  # (size, mtime_ns) of the inputs: a changed file invalidates resumed shards
    error: str | None = None


def sanitize_key(name: str) -> str:
    """A recording name usable in a webdataset key (no dots, slashes or whitespace)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name)


def segment_key(recording: str, segment: int) -> str:
    return f"{sanitize_key(recording)}_s{segment:06d}"


def find_gen1_recordings(src: str | os.PathLike) -> list[tuple[str, Path, Path | None]]:
    """(recording name, *_td.dat, matching *_bbox.npy or None) under `src`, sorted by name."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: source directory does not exist")
    if src.is_file():
        dats = [src]
        root = src.parent
    else:
        dats = sorted(src.rglob("*_td.dat"))
        root = src
    if not dats:
        raise FileNotFoundError(f"{src}: no GEN1 recordings (*_td.dat files) found")
    found = []
    for dat in dats:
        stem = dat.name[: -len("_td.dat")] if dat.name.endswith("_td.dat") else dat.stem
        bbox = dat.with_name(stem + "_bbox.npy")
        rel = dat.relative_to(root).parent / stem
        found.append((rel.as_posix(), dat, bbox if bbox.exists() else None))
    return found


def _stamp(*paths) -> tuple:
    out = []
    for p in paths:
        if p is None:
            continue
        st = os.stat(p)
        out.extend([st.st_size, st.st_mtime_ns])
    return tuple(out)


def list_segments(src, segment_ms: float, require_boxes: bool = True) -> list[SegmentItem]:
    """Every segment of every recording under `src`; a broken recording becomes one item with `error`.

    Each DAT file is checked here once, front to back (header, size, sorted timestamps), so the
    per-segment reads can trust the binary search.
    """
    segment_us = int(round(segment_ms * 1000))
    if segment_us <= 0:
        raise ValueError(f"--segment-ms must be positive, got {segment_ms}")
    items: list[SegmentItem] = []
    for recording, dat, bbox in find_gen1_recordings(src):
        try:
            if bbox is None and require_boxes:
                raise FileNotFoundError(f"{dat}: no matching {dat.name[:-len('_td.dat')]}_bbox.npy next to it")
            header = evio.check_dat_sorted(dat)
            boxes = evio.read_boxes(bbox) if bbox is not None else evio.empty_boxes()
            edges = seglib.recording_edges(evio.dat_time_span(header), boxes["t"], segment_us)
            sensor = header.sensor_size or GEN1_SENSOR_SIZE
            stamp = _stamp(dat, bbox)
            for k in range(len(edges) - 1):
                items.append(SegmentItem(segment_key(recording, k), str(dat), recording, str(dat),
                                         None if bbox is None else str(bbox), k, int(edges[k]), int(edges[k + 1]),
                                         tuple(sensor), stamp))
        except (OSError, ValueError) as exc:
            items.append(SegmentItem(segment_key(recording, 0), str(dat), recording, str(dat), None, 0, 0, 0,
                                     GEN1_SENSOR_SIZE, (), error=str(exc)))
    return items


def encode_segment(item: SegmentItem, compress_level: int = 1) -> dict:
    """The webdataset fields of one segment (top-level, so worker processes can run it)."""
    if item.error:
        raise ValueError(item.error)
    events = evio.read_dat(item.dat_path, item.t0, item.t1)
    if item.bbox_path is not None:
        boxes = evio.read_boxes(item.bbox_path)
        lo, hi = seglib.split_sorted(boxes["t"], [item.t0, item.t1])
        boxes = boxes[lo:hi]
    else:
        boxes = evio.empty_boxes()
    meta = {
        "recording": item.recording,
        "segment": item.segment,
        "t0": item.t0,
        "t1": item.t1,
        "sensor_size": list(item.sensor_size),
        "num_events": int(len(events)),
        "num_boxes": int(len(boxes)),
        "source": item.source,
    }
    return {EVENTS_EXT: encode_events(events, item.t0, compress_level), BOXES_EXT: encode_boxes(boxes), META_EXT: meta}


def shard_events(src, out_dir, *, format: str = "gen1", segment_ms: float = 500.0, split: str = "train",
                 classes=None, require_boxes: bool = True, compress_level: int = 1, **writer_kw) -> dict:
    """Shard the event recordings under `src` into `out_dir`; returns the manifest.

    compress_level: deflate level of the event columns, 1 (default: fast, ~2.5x smaller than DAT on
    random events) to 9, or 0 to store them uncompressed (largest, fastest to read).
    """
    import functools

    from fastvid.shard.writer import write_shard_set

    if not 0 <= int(compress_level) <= 9:
        raise ValueError(f"compress level must be 0 (stored) to 9, got {compress_level}")

    if format not in FORMATS:
        raise ValueError(f"unknown event dataset format {format!r}; known: {', '.join(FORMATS)}")
    items = list_segments(src, segment_ms, require_boxes=require_boxes)
    options = {"format": format, "segment_ms": segment_ms,
               "sensor_size": list(next((i.sensor_size for i in items if not i.error), GEN1_SENSOR_SIZE)),
               "num_recordings": len({i.recording for i in items}),
               "events_ext": EVENTS_EXT, "boxes_ext": BOXES_EXT, "compress_level": int(compress_level)}
    encode = functools.partial(encode_segment, compress_level=int(compress_level))
    return write_shard_set(items, encode, out_dir, kind="events",
                           classes=list(classes or GEN1_CLASSES), options=options, split=split,
                           desc=f"shard events ({format})", **writer_kw)


# ------------------------------------------------------------------------------------ reading


@dataclasses.dataclass(frozen=True)
class SegmentRef:
    """Where one segment sample lives: its tar and the (offset, size) of each field."""

    recording: str  # the sanitized recording name of the key
    segment: int
    key: str
    tar: str
    fields: dict  # ext -> (offset, size)


def opened_segments(opened) -> list[SegmentRef]:
    """The events reader of fastvid.shard.reader (an OpenedSet of kind "events") -> sorted SegmentRefs."""
    return index_segments(opened.pairs())


def index_segments(shards) -> list[SegmentRef]:
    """Every segment of an event shard set (dir or list of (tar, idx)/tar paths), sorted by
    (recording, segment)."""
    if isinstance(shards, (str, os.PathLike)):
        from fastvid.shard.reader import open_shard_set

        return open_shard_set(shards, kind="events")
    else:
        from fastvid.shard.dali_index import index_path_for

        pairs = [(Path(p), index_path_for(Path(p))) if not isinstance(p, tuple) else (Path(p[0]), Path(p[1])) for p in shards]
    from fastvid.shard.dali_index import indexed_samples

    refs = []
    for tar, idx in pairs:
        for key, fields in indexed_samples(tar, idx):
            m = _SEGMENT_KEY.match(key.rsplit("/", 1)[-1])
            if not m:
                raise ValueError(f"{tar}: sample key {key!r} is not an event segment key (<recording>_sNNNNNN)")
            missing = [e for e in (EVENTS_EXT, META_EXT) if e not in fields]
            if missing:
                raise ValueError(f"{tar}: sample {key!r} lacks {missing}")
            refs.append(SegmentRef(m["rec"], int(m["seg"]), key, str(tar), fields))
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

    def read_fields(self, ref: SegmentRef) -> dict:
        fd = self._fd(ref.tar)
        out = {}
        for ext, (offset, size) in ref.fields.items():
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
