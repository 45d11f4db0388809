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
    """What one pass over an events file found: its sensor, its time span, and how to find each
    segment's event index range [start, stop) from the segment edges."""

    sensor_size: tuple[int, int] | None
    span: tuple[int, int] | None  # (first, last) timestamp, None when the file holds no events
    locate: Callable[[np.ndarray], list[tuple[int, int]]]  # segment edges -> (start, stop) per segment


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    name: str
    classes: list
    sensor_size: tuple[int, int]  # when the file does not say
    events_suffix: str  # '<stem><events_suffix>' next to '<stem>_bbox.npy'
    scan: Callable[[Path], StreamScan]
    read: Callable[[str, int, int], np.ndarray]  # (path, start, stop) -> EVENT_DTYPE
    # For streams without random access: (recording, work folder) -> a file `scan`/`read` understand.
    prepare: Callable[[SourceRecording, Path], Path] | None = None


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
            ranges.append((i0, i1))
        return ranges

    return StreamScan(header.sensor_size, evio.dat_time_span(header), locate)


def _read_dat(path: str, start: int, stop: int) -> np.ndarray:
    return evio.read_dat_indices(path, start, stop)


GEN1 = SourceFormat("gen1", GEN1_CLASSES, GEN1_SENSOR_SIZE, "_td.dat", _scan_dat, _read_dat)


# ------------------------------------------------------------------------------------- GEN4
# Prophesee 1 Mpx ("gen4") as RVT distributes it: `<name>_td.h5` with datasets events/{x,y,p,t}
# (blosc-compressed: the hdf5plugin package registers the filter) and optionally events/{width,height},
# next to `<name>_bbox.npy`. Timestamps are not sorted everywhere in these files; as RVT does, each
# one is raised to the running maximum (a non-decreasing clock), which keeps every event.

GEN4_CLASSES = ["pedestrian", "two wheeler", "car", "truck", "bus", "traffic sign", "traffic light"]
GEN4_SENSOR_SIZE = (1280, 720)
_H5_CHUNK = 1 << 22  # events per read while scanning
_H5_STRIDE = 4096  # every this many events the scan keeps the corrected time, to locate segment starts


def _open_h5(path):
    from fastvid import _gpu

    h5py = _gpu.require("h5py", "reading 1 Mpx (.h5) event files; pip install 'fastvid[gen4]'")
    try:  # registers the blosc filter the distributed files use
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        group = f["events"]
        missing = [k for k in "xypt" if k not in group]
        if missing:
            raise ValueError(f"{path}: the 'events' group lacks dataset(s) {missing}; it has {sorted(group.keys())}")
        n = len(group["t"])
        lengths = {k: len(group[k]) for k in "xyp"}
        if any(v != n for v in lengths.values()):
            raise ValueError(f"{path}: events/x, y, p, t differ in length (t: {n}, {lengths})")
    except KeyError:
        f.close()
        raise ValueError(f"{path}: no 'events' group (expected events/x, events/y, events/p, events/t)") from None
    except ValueError:
        f.close()
        raise
    return f


def _h5_read(path, dataset, start: int, stop: int) -> np.ndarray:
    try:
        return np.asarray(dataset[start:stop])
    except OSError as exc:  # a missing filter plugin or damaged chunk
        raise ValueError(f"{path}: cannot read {dataset.name}[{start}:{stop}] ({exc}); blosc-compressed files "
                         "need `pip install hdf5plugin`") from None


def _scan_h5(path: Path) -> StreamScan:
    with _open_h5(path) as f:
        g = f["events"]
        sensor = None
        if "width" in g and "height" in g:
            sensor = (int(np.asarray(g["width"][()]).item()), int(np.asarray(g["height"][()]).item()))
        n = len(g["t"])
        samples, carry, first = [], None, None
        for a in range(0, n, _H5_CHUNK):
            t = _h5_read(path, g["t"], a, min(a + _H5_CHUNK, n)).astype(np.int64)
            if first is None and len(t):
                first = int(t[0])
                if first < 0:
                    raise ValueError(f"{path}: negative timestamp {first} at event 0")
            if carry is not None:
                t[0] = max(int(t[0]), carry)
            np.maximum.accumulate(t, out=t)
            samples.append(t[::_H5_STRIDE].copy())  # _H5_CHUNK is a multiple of the stride
            carry = int(t[-1])
    sub = np.concatenate(samples) if samples else np.zeros(0, np.int64)
    span = (int(sub[0]), carry) if n else None

    def locate(edges):
        """Event index of each edge (first event whose corrected time is >= it), from the kept
        samples plus one stride of timestamps per edge."""
        starts = []
        with _open_h5(path) as f:
            t_ds = f["events"]["t"]
            for e in np.asarray(edges, np.int64).tolist():
                j = int(np.searchsorted(sub, e, "left"))
                if j == 0:
                    starts.append(0)
                    continue
                lo = (j - 1) * _H5_STRIDE
                block = _h5_read(path, t_ds, lo, min(lo + _H5_STRIDE, n)).astype(np.int64)
                block[0] = sub[j - 1]  # the corrected time there (the running maximum so far)
                np.maximum.accumulate(block, out=block)
                starts.append(lo + int(np.searchsorted(block, e, "left")))
        return [(starts[k], starts[k + 1]) for k in range(len(starts) - 1)]

    return StreamScan(sensor, span, locate)


def _read_h5(path: str, start: int, stop: int) -> np.ndarray:
    """Events [start, stop) with the corrected clock. A segment starts at an event that sets a new
    running maximum, so the running maximum within the segment equals the file's."""
    from fastvid.events.types import EVENT_DTYPE

    with _open_h5(path) as f:
        g = f["events"]
        cols = {k: _h5_read(path, g[k], start, stop) for k in "xypt"}
    out = np.empty(stop - start, EVENT_DTYPE)
    t = cols["t"].astype(np.int64)
    np.maximum.accumulate(t, out=t)
    out["t"] = t
    for k in "xy":
        v = cols[k]
        if len(v) and (int(v.min()) < 0 or int(v.max()) >= 1 << 14):
            raise ValueError(f"{path}: events/{k} holds {int(v.min())}..{int(v.max())}, outside 0..16383")
        out[k] = v
    out["p"] = cols["p"] > 0  # 0/1 or -1/+1
    return out


GEN4 = SourceFormat("gen4", GEN4_CLASSES, GEN4_SENSOR_SIZE, "_td.h5", _scan_h5, _read_h5)



# -------------------------------------------------------------------------------------- RAW
# Prophesee RAW recordings (EVT 2.0 / 3.0, see fastvid.events.raw) next to `<stem>_bbox.npy`. Their
# words cannot be located by time without decoding from the start, so each file is decoded once into
# a DAT file in the job's work folder and sharded from there like GEN1.


def _prepare_raw(rec: SourceRecording, work_dir: Path) -> Path:
    from fastvid.events.raw import read_raw
    from fastvid.events.codec import sanitize_key

    events, header = read_raw(rec.events, return_header=True)
    if header.sensor_size is None:
        raise ValueError(f"{rec.events}: the RAW header gives no sensor size ('% geometry WxH' or width/height in '% format')")
    work_dir.mkdir(parents=True, exist_ok=True)
    return evio.write_dat(work_dir / f"{sanitize_key(rec.name)}_td.dat", events, header.sensor_size)


RAW = SourceFormat("raw", [], GEN4_SENSOR_SIZE, ".raw", _scan_dat, _read_dat, _prepare_raw)

SOURCE_FORMATS: dict[str, SourceFormat] = {GEN1.name: GEN1, GEN4.name: GEN4, RAW.name: RAW}


def source_format(name: str) -> SourceFormat:
    try:
        return SOURCE_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown event dataset format {name!r}; known: {', '.join(SOURCE_FORMATS)}") from None
