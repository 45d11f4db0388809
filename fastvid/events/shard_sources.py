"""Finding event recordings in a dataset folder and reading them by segment, one entry per layout.

`SOURCE_FORMATS` is the registry of dataset layouts `fastvid shard events --format` accepts. Each
`SourceFormat` says how to find (recording, events file, labels file) triples under a folder, how to
scan one events file once (time span, sensor size, per-segment event index ranges) and how to read
one segment's events back by index range. Pure discovery and reading: no shard writing here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np

from fastvid.events import io as evio
from fastvid.events.types import GEN1_SENSOR_SIZE

GEN1_CLASSES = ["car", "pedestrian"]


@dataclasses.dataclass(frozen=True)
class SourceRecording:
    name: str  # relative path of the recording stem, '/'-separated
    events: Path
    boxes: Path | None


@dataclasses.dataclass(frozen=True)
class StreamScan:
    """What one pass over an events file found: its sensor and, per segment, the event index range
    [start, stop) and `carry` (the timestamp floor going into the segment; see SourceFormat.read)."""

    sensor_size: tuple[int, int] | None
    span: tuple[int, int] | None  # (first, last) timestamp, None when the file holds no events
    locate: Callable[[np.ndarray], list[tuple[int, int, int]]]  # segment edges -> ranges


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    name: str
    classes: list
    sensor_size: tuple[int, int]  # when the file does not say
    events_suffix: str  # '<stem><events_suffix>' next to '<stem>_bbox.npy'
    scan: Callable[[Path], StreamScan]
    read: Callable[[str, int, int, int], np.ndarray]  # (path, start, stop, carry) -> EVENT_DTYPE


def find_recordings(src: str | os.PathLike, fmt: "SourceFormat") -> list[SourceRecording]:
    """Recordings (`*<events_suffix>` with a matching `*_bbox.npy` or None) under `src`, sorted by name."""
    src = Path(src)
    suffix = fmt.events_suffix
    if not src.exists():
        raise FileNotFoundError(f"{src}: source directory does not exist")
    if src.is_file():
        files, root = [src], src.parent
    else:
        files, root = sorted(src.rglob(f"*{suffix}")), src
    if not files:
        raise FileNotFoundError(f"{src}: no {fmt.name} recordings (*{suffix} files) found")
    found = []
    for path in files:
        stem = path.name[: -len(suffix)] if path.name.endswith(suffix) else path.stem
        bbox = path.with_name(stem + "_bbox.npy")
        rel = path.relative_to(root).parent / stem
        found.append(SourceRecording(rel.as_posix(), path, bbox if bbox.exists() else None))
    return found


# ------------------------------------------------------------------------------------- GEN1


def _scan_dat(path: Path) -> StreamScan:
    # One front-to-back check (header, size, sorted timestamps) so per-segment reads can trust binary search.
    header = evio.check_dat_sorted(path)

    def locate(edges):
        ranges = []
        for t0, t1 in zip(edges[:-1], edges[1:]):
            i0, i1 = evio.dat_index_range(header, int(t0), int(t1))
            ranges.append((i0, i1, int(t0)))
        return ranges

    return StreamScan(header.sensor_size, evio.dat_time_span(header), locate)


def _read_dat(path: str, start: int, stop: int, carry: int) -> np.ndarray:
    return evio.read_dat_indices(path, start, stop)


GEN1 = SourceFormat("gen1", GEN1_CLASSES, GEN1_SENSOR_SIZE, "_td.dat", _scan_dat, _read_dat)

SOURCE_FORMATS: dict[str, SourceFormat] = {GEN1.name: GEN1}


def source_format(name: str) -> SourceFormat:
    try:
        return SOURCE_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown event dataset format {name!r}; known: {', '.join(SOURCE_FORMATS)}") from None


def find_gen1_recordings(src: str | os.PathLike) -> list[tuple[str, Path, Path | None]]:
    """(recording name, *_td.dat, matching *_bbox.npy or None) under `src`, sorted by name."""
    return [(r.name, r.events, r.boxes) for r in find_recordings(src, GEN1)]
