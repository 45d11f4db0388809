"""Writing event shards: recordings cut into fixed-duration segments, one WebDataset sample per segment.

Segments are half-open [t0, t1) on the recording clock (see fastvid.events.segments), so every event
and box lands in exactly one sample (the sample format is in fastvid.events.codec). Boxes are
cropped to the sensor first (boxes reaching outside the frame are a known labelling error in GEN1
and 1 Mpx; a box left with no area is dropped). Writing goes through
fastvid.store.writer.write_shard_set (atomic tars, DALI index, per-shard metadata, manifest with
``kind: "events"``, failures, resume), which keeps each recording's segments together and in order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from pathlib import Path

import numpy as np

from fastvid.events import io as evio
from fastvid.events import segments as seglib
from fastvid.events.blocks import BLOCK_CODECS
from fastvid.events.codec import (BOXES_EXT, EVENT_CODECS, EVENT_LAYOUTS, META_EXT, encode_boxes, encode_event_field,
                                  segment_key)
from fastvid.events.layouts import find_recordings, source_format


@dataclasses.dataclass(frozen=True)
class SegmentItem:
    """One segment of one recording to be encoded (or a recording that failed while listing)."""

    key: str
    source: str
    recording: str
    events_path: str  # the events file (.dat for gen1, .h5 for gen4)
    bbox_path: str | None
    segment: int
    t0: int
    t1: int
    sensor_size: tuple[int, int]
    stamp: tuple  # (size, mtime_ns) of the inputs: a changed file invalidates resumed shards
    error: str | None = None
    format: str = "gen1"
    event_range: tuple[int, int] = (0, 0)  # [start, stop) event indices in the events file
    recording_t_end: int = 0  # one past the recording's last event or box


def _stamp(*paths) -> tuple:
    out = []
    for p in paths:
        if p is None:
            continue
        st = os.stat(p)
        out.extend([st.st_size, st.st_mtime_ns])
    return tuple(out)


MAX_BOX_DISTANCE_US = 3_600_000_000  # a box an hour away from every event is a corrupt timestamp


def _check_box_times(t: np.ndarray, span: tuple[int, int], bbox) -> None:
    """Box times must be near the recording's events; a corrupt one would make the segment grid explode."""
    if len(t) and (int(t.min()) < span[0] - MAX_BOX_DISTANCE_US or int(t.max()) > span[1] + MAX_BOX_DISTANCE_US):
        bad = int(t.min()) if int(t.min()) < span[0] - MAX_BOX_DISTANCE_US else int(t.max())
        raise ValueError(f"{bbox}: box timestamp {bad} us is more than an hour outside the recording's events "
                         f"({span[0]}..{span[1]} us); the label file is corrupt or belongs to another recording")


def list_segments(src, segment_ms: float, require_boxes: bool = True, format: str = "gen1",
                  work_dir=None) -> list[SegmentItem]:
    """Every segment of every recording under `src`; a broken recording becomes one item with `error`.

    Each events file is scanned here once, front to back, so the per-segment reads can trust it.
    work_dir: where formats that need it (raw) put the decoded copy the segments are read from.
    """
    fmt = source_format(format)
    segment_us = int(round(segment_ms * 1000))
    if segment_us <= 0:
        raise ValueError(f"--segment-ms must be positive, got {segment_ms}")
    items: list[SegmentItem] = []
    for rec in find_recordings(src, fmt):
        events_path, bbox = rec.events, rec.boxes
        try:
            if bbox is None and require_boxes:
                stem = events_path.name[: -len(fmt.events_suffix)]
                raise FileNotFoundError(f"{events_path}: no matching {stem}_bbox.npy next to it")
            if fmt.prepare is not None:
                if work_dir is None:
                    raise ValueError(f"format {fmt.name!r} needs a work folder to decode {events_path} into")
                events_path = fmt.prepare(rec, Path(work_dir))
            scan = fmt.scan(events_path)
            sensor = tuple(scan.sensor_size or fmt.sensor_size)
            boxes = evio.read_boxes(bbox, sensor_size=sensor) if bbox is not None else evio.empty_boxes()
            if scan.span is None:  # a header-only file: a failure to record, not a silent drop
                raise ValueError(f"{events_path}: the recording holds no events (header only), nothing to shard")
            _check_box_times(boxes["t"], scan.span, bbox)
            edges = seglib.recording_edges(scan.span, boxes["t"], segment_us)
            ranges = scan.locate(edges)
            last = scan.span[1] if scan.span else -1
            if len(boxes):
                last = max(last, int(boxes["t"].max()))
            stamp = _stamp(rec.events, bbox)
            for k in range(len(edges) - 1):
                items.append(SegmentItem(segment_key(rec.name, k), str(rec.events), rec.name, str(events_path),
                                         None if bbox is None else str(bbox), k, int(edges[k]), int(edges[k + 1]),
                                         sensor, stamp, format=fmt.name, event_range=tuple(int(v) for v in ranges[k]),
                                         recording_t_end=last + 1))
        except (OSError, ValueError) as exc:
            items.append(SegmentItem(segment_key(rec.name, 0), str(rec.events), rec.name, str(events_path), None, 0,
                                     0, 0, tuple(fmt.sensor_size), (), error=str(exc), format=fmt.name))
    return items


@dataclasses.dataclass(frozen=True)
class EventLayout:
    """How a segment's events are stored (see fastvid.events.codec): the layout, its codec and level,
    the block layout's options, and the representations precomputed into each sample."""

    layout: str = "blocks"
    codec: str = "lz4"
    level: int = 1
    block_ms: float = 5.0
    time: str = "delta"
    xy: str = "split"
    precompute: tuple = ()  # fastvid.events.precompute.RepresentationSpec, one field each

    def check(self) -> "EventLayout":
        """This layout validated, with "none"/"stored" (no compression) spelled as its layout spells it, level 0."""
        if self.layout not in EVENT_LAYOUTS:
            raise ValueError(f"unknown event layout {self.layout!r}; choose one of {', '.join(EVENT_LAYOUTS)}")
        if self.codec in ("none", "stored"):  # no level to choose; each layout's name for "uncompressed"
            self = dataclasses.replace(self, codec="none" if self.layout == "blocks" else "stored", level=0)
        if self.layout == "blocks":
            from fastvid.events.blocks import TIME_LAYOUTS, XY_LAYOUTS

            if self.time not in TIME_LAYOUTS or self.xy not in XY_LAYOUTS or not self.block_ms > 0:
                raise ValueError(f"time column must be one of {TIME_LAYOUTS}, xy column one of {XY_LAYOUTS} and block_ms "
                                 f"positive; got {self.time!r}, {self.xy!r}, {self.block_ms}")
        codecs = BLOCK_CODECS if self.layout == "blocks" else EVENT_CODECS
        if self.codec not in codecs:
            raise ValueError(f"codec {self.codec!r} is not one of the {self.layout} layout's: {', '.join(codecs)}")
        top = {"zstd": 19, "deflate": 9, "lz4": 12}.get(self.codec, 0)
        if not 0 <= int(self.level) <= top:
            raise ValueError(f"{self.codec} compress level must be 0 (stored) to {top}, got {self.level}")
        return self

    @property
    def stored(self) -> bool:
        return self.codec in ("stored", "none") or int(self.level) == 0

    @property
    def representation_codec(self) -> str:
        """Precomputed representations use the events' block codec (zstd for the npz layout's deflate)."""
        if self.stored:
            return "none"
        return self.codec if self.codec in BLOCK_CODECS else "zstd"

    def options(self) -> dict:
        """What the manifest records (and what makes a rerun with other settings a different set)."""
        if self.layout == "npz":
            codec = "stored" if self.stored else self.codec
            out = {"layout_version": 1, "layout": "npz", "events_ext": "events.npz.zst" if codec == "zstd" else "events.npz",
                   "codec": codec, "compress_level": 0 if self.stored else int(self.level)}
        else:
            out = {"layout_version": 2, "layout": "blocks", "events_ext": "events.evb",
                   "codec": "none" if self.stored else self.codec, "compress_level": 0 if self.stored else int(self.level),
                   "block_ms": float(self.block_ms), "time_column": self.time, "xy_column": self.xy}
        if self.precompute:
            out["precompute"] = [spec.describe() for spec in self.precompute]
        return out


def encode_segment(item: SegmentItem, compress_level: int = 1, codec: str = "zstd", layout: EventLayout | None = None) -> dict:
    """The webdataset fields of one segment (top-level, so worker processes can run it). Without `layout`,
    the npz layout in `codec` at `compress_level` (the former signature)."""
    if item.error:
        raise ValueError(item.error)
    layout = layout or EventLayout("npz", codec, compress_level)
    start, stop = item.event_range
    events = source_format(item.format).read(item.events_path, start, stop)
    if len(events) and (int(events["t"][0]) < item.t0 or int(events["t"][-1]) >= item.t1):
        raise ValueError(f"{item.events_path}: events of segment {item.segment} fall outside [{item.t0}, {item.t1}): "
                         "the file changed since it was listed")
    if item.bbox_path is not None:
        boxes = evio.read_boxes(item.bbox_path, sensor_size=item.sensor_size)
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
        "recording_t_end": item.recording_t_end,
        "layout_version": 2 if layout.layout == "blocks" else 1,
    }
    if layout.layout == "blocks":
        ext, data = encode_event_field(events, item.t0, layout.codec, layout.level, "blocks", block_ms=layout.block_ms,
                                       time=layout.time, xy=layout.xy)
    else:
        ext, data = encode_event_field(events, item.t0, layout.codec, layout.level)
    fields = {ext: data, BOXES_EXT: encode_boxes(boxes), META_EXT: meta}
    if layout.precompute:
        from fastvid.events.precompute import encode_representation

        for spec in layout.precompute:
            fields[spec.ext] = encode_representation(events, item.t0, item.t1, spec, item.sensor_size,
                                                     layout.representation_codec, max(int(layout.level), 1))
    return fields


def shard_events(src, out_dir, *, format: str = "gen1", segment_ms: float = 500.0, split: str = "train",
                 classes=None, require_boxes: bool = True, storage: EventLayout | None = None, precompute=(),
                 **writer_kw) -> dict:
    """Shard the event recordings under `src` into `out_dir`; returns the manifest.

    format: a key of fastvid.events.layouts.SOURCE_FORMATS ("gen1": *_td.dat, "gen4": *_td.h5,
    "raw": Prophesee EVT 2.0/3.0 *.raw; each with *_bbox.npy).
    storage: how the events are stored, an EventLayout (default: the "blocks" layout, ``events.evb``, a
    time index of 5 ms blocks, lz4 at level 1). Its layout is "blocks" (codec "lz4", "zstd" or "none";
    time "delta"/"raw", xy "split"/"packed", block_ms) or "npz" (the version-1 layout: codec "zstd",
    "deflate" or "stored"); its level is the codec's (zstd 1-19, deflate 1-9, lz4 1 fast or 2-12 HC), or
    0 to store the columns uncompressed (largest, fastest to read). See fastvid.events.codec and
    fastvid.events.blocks.
    precompute: representations stored next to the events, as spec strings or RepresentationSpecs
    ("stacked_histogram:window_ms=50:bins=10", see fastvid.events.precompute).
    """
    from fastvid.events.precompute import parse_spec

    storage = storage or EventLayout()
    specs = storage.precompute + tuple(parse_spec(p, segment_ms) if isinstance(p, str) else p for p in precompute)
    spec_layout = dataclasses.replace(storage, precompute=specs).check()
    fmt = source_format(format)
    # Decoded copies (raw) live in the output folder, one per node, only while the job runs.
    work_dir = Path(out_dir) / f".prepared-n{int(writer_kw.get('node_rank', 0))}" if fmt.prepare else None
    try:
        items = list_segments(src, segment_ms, require_boxes=require_boxes, format=fmt.name, work_dir=work_dir)
        return _write(items, fmt, out_dir, split, classes, segment_ms, spec_layout, writer_kw)
    finally:
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)


def _write(items, fmt, out_dir, split, classes, segment_ms, layout: EventLayout, writer_kw) -> dict:
    from fastvid.store.writer import ShardJob, write_shard_set

    options = {"format": fmt.name, "segment_ms": segment_ms,
               "sensor_size": list(next((i.sensor_size for i in items if not i.error), fmt.sensor_size)),
               "num_recordings": len({i.recording for i in items}),
               "boxes_ext": BOXES_EXT, **layout.options()}
    encode = functools.partial(encode_segment, layout=layout)
    # A recording's segments stay together, in time order (recordings are shuffled as wholes): a rank that
    # streams a recording reads it from one shard or a few consecutive ones, not from every shard of the set.
    job = ShardJob(kind="events", classes=list(classes or fmt.classes), options=options, split=split,
                   desc=f"shard events ({fmt.name})", group=_recording_of, **writer_kw)
    return write_shard_set(items, encode, out_dir, job)


def _recording_of(item: SegmentItem) -> str:
    return item.recording
