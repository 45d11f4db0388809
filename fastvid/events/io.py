"""Reading event recordings and their box labels into fastvid's in-memory layout.

* Prophesee DAT (`*_td.dat`, as in GEN1): ASCII header lines starting with '%' (``% Width 304``,
  ``% Height 240``, ``% Version 2`` ...), then one byte event type and one byte event size, then
  8-byte events: uint32 timestamp (us) and a uint32 word with x in bits 0-13, y in bits 14-27 and
  the polarity in bit 28. The file is memory-mapped; a time range is found by binary search on the
  (sorted) timestamps, so only the requested events are touched.
* Box labels (`*_bbox.npy`): structured arrays with `ts` (or `t`), x, y, w, h, class_id,
  class_confidence (older files: confidence), track_id (uint32), normalized to :data:`BOX_DTYPE`
  and optionally cropped to the sensor (`crop_boxes`).
* Plain arrays: `.npy` / `.npz` / `.h5` holding x, y, t, p.

Everything returns :data:`fastvid.events.types.EVENT_DTYPE` arrays. Broken files raise one
ValueError naming the file and the byte offset of the problem.
"""

from __future__ import annotations

import functools
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastvid.events.types import EVENT_DTYPE
from fastvid.store.atomic import atomic_path

# On-disk DAT event: timestamp + packed address word.
DAT_EVENT_SIZE = 8
_DAT_RAW_DTYPE = np.dtype([("t", "<u4"), ("w", "<u4")])
_X_MASK = 0x3FFF  # bits 0-13
_Y_SHIFT, _Y_MASK = 14, 0x3FFF  # bits 14-27
_P_SHIFT = 28  # bit 28

# Boxes of every label file are normalized to this layout (t in microseconds, like events).
BOX_DTYPE = np.dtype(
    [
        ("t", "<i8"),
        ("x", "<f4"),
        ("y", "<f4"),
        ("w", "<f4"),
        ("h", "<f4"),
        ("class_id", "<i4"),
        ("class_confidence", "<f4"),
        ("track_id", "<u4"),
    ]
)



@dataclass(frozen=True)
class DatHeader:
    """What the header of a DAT file says, plus where the events are."""

    path: str
    width: int | None
    height: int | None
    version: int | None
    event_type: int
    event_size: int
    data_offset: int  # byte offset of the first event
    num_events: int
    fields: dict

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        """(width, height) as in EVENT representations, or None when the header does not say."""
        if self.width is None or self.height is None:
            return None
        return (self.width, self.height)


def _header_int(path, key, value, offset):
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: bad DAT header at byte {offset}: '{key}' should be an integer, got {value!r}") from None


def read_dat_header(path: str | os.PathLike) -> DatHeader:
    """Parse the header of a Prophesee DAT file (no events are read).

    Raises ValueError for a missing/undecodable header, an event size other than 8 bytes, or a
    payload that is not a whole number of events (a truncated file), with the byte offset.
    """
    path = str(path)
    size = os.path.getsize(path)  # FileNotFoundError names the file
    fields: dict[str, str] = {}
    width = height = version = None
    with open(path, "rb") as f:
        first = f.read(1)
        if first != b"%":
            raise ValueError(
                f"{path}: bad DAT header at byte 0: a Prophesee DAT file starts with '%' header lines "
                f"(e.g. '% Width 304'), found {first!r}"
            )
        f.seek(0)
        # Header lines run until the first line that does not start with '%' (or an explicit '% end').
        while True:
            line_start = f.tell()
            if f.read(1) != b"%":
                f.seek(line_start)
                break
            line = f.readline()
            if not line.endswith(b"\n"):
                raise ValueError(f"{path}: bad DAT header at byte {line_start}: the file ends inside a header line")
            try:
                text = line.decode("ascii").strip()
            except UnicodeDecodeError:
                raise ValueError(f"{path}: bad DAT header at byte {line_start}: header line is not ASCII text") from None
            if text == "end":
                break
            key, _, value = text.partition(" ")
            value = value.strip()
            fields[key] = value
            lower = key.lower()
            if lower == "width":
                width = _header_int(path, key, value, line_start)
            elif lower == "height":
                height = _header_int(path, key, value, line_start)
            elif lower == "version":
                version = _header_int(path, key, value, line_start)
            elif lower == "geometry" and "x" in value:  # newer writers: '% geometry 1280x720'
                w, _, h = value.partition("x")
                width, height = _header_int(path, key, w, line_start), _header_int(path, key, h, line_start)
        type_offset = f.tell()
        type_size = f.read(2)
    if len(type_size) < 2:
        raise ValueError(f"{path}: bad DAT header at byte {type_offset}: the file ends before the event type/size bytes")
    event_type, event_size = type_size[0], type_size[1]
    if event_size != DAT_EVENT_SIZE:
        raise ValueError(
            f"{path}: bad DAT header at byte {type_offset + 1}: event size is {event_size} bytes, "
            f"only {DAT_EVENT_SIZE}-byte events (timestamp + packed x/y/p) are supported"
        )
    if (width is None) != (height is None):
        raise ValueError(f"{path}: bad DAT header: it gives only one of Width/Height ({fields})")
    data_offset = type_offset + 2
    payload = size - data_offset
    num_events, rest = divmod(payload, DAT_EVENT_SIZE)
    if rest:
        raise ValueError(
            f"{path}: truncated DAT file: {payload} event bytes after the header is not a whole number of "
            f"{DAT_EVENT_SIZE}-byte events; the last event starts at byte {data_offset + num_events * DAT_EVENT_SIZE} "
            f"and has only {rest} bytes"
        )
    return DatHeader(path, width, height, version, event_type, event_size, data_offset, num_events, fields)


def _dat_memmap(header: DatHeader) -> np.ndarray:
    if header.num_events == 0:
        return np.zeros(0, _DAT_RAW_DTYPE)
    return np.memmap(header.path, dtype=_DAT_RAW_DTYPE, mode="r", offset=header.data_offset, shape=(header.num_events,))


def _bisect_left(ts, value: int, lo: int = 0, hi: int | None = None) -> int:
    """First index with ts[i] >= value, touching O(log n) entries of the memory map (np.searchsorted
    would copy the whole strided timestamp column first)."""
    hi = len(ts) if hi is None else hi
    while lo < hi:
        mid = (lo + hi) // 2
        if int(ts[mid]) < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def dat_index_range(path_or_header, t_start=None, t_end=None) -> tuple[int, int]:
    """Event index range [i0, i1) of the events with t_start <= t < t_end (binary search)."""
    header = path_or_header if isinstance(path_or_header, DatHeader) else read_dat_header(path_or_header)
    raw = _dat_memmap(header)
    ts = raw["t"]
    i0 = 0 if t_start is None else _bisect_left(ts, int(t_start))
    i1 = header.num_events if t_end is None else _bisect_left(ts, int(t_end), lo=i0)
    return i0, i1


def read_dat(
    path: str | os.PathLike,
    t_start: int | None = None,
    t_end: int | None = None,
    *,
    return_header: bool = False,
    check_sorted: bool = True,
):
    """Read the events of a Prophesee DAT file with t_start <= t < t_end (us; None = open end).

    Only the requested range is read from the memory map. With `check_sorted` the timestamps that
    are read are checked to go forward (a full read checks the whole file, in chunks).
    Returns the EVENT_DTYPE array, or (events, DatHeader) with `return_header=True`; the sensor
    size is `header.sensor_size` = (width, height).
    """
    header = read_dat_header(path)
    if t_start is not None and t_end is not None and t_end < t_start:
        raise ValueError(f"{path}: t_end={t_end} is before t_start={t_start}")
    if t_start is None and t_end is None:
        i0, i1 = 0, header.num_events
    else:
        i0, i1 = dat_index_range(header, t_start, t_end)
    out = read_dat_indices(header, i0, i1, check_sorted=check_sorted)
    return (out, header) if return_header else out


def read_dat_indices(path_or_header, start: int, stop: int, *, check_sorted: bool = True) -> np.ndarray:
    """Events [start, stop) (by index) of a DAT file as EVENT_DTYPE, read in chunks from the memory map."""
    header = path_or_header if isinstance(path_or_header, DatHeader) else read_dat_header(path_or_header)
    i0, i1 = int(start), int(stop)
    if not 0 <= i0 <= i1 <= header.num_events:
        raise ValueError(f"{header.path}: event range [{i0}, {i1}) is outside the file's {header.num_events} events")
    raw = _dat_memmap(header)
    out = np.empty(i1 - i0, EVENT_DTYPE)
    if i1 > i0:
        # One compiled pass from the page cache into the output fields (numpy's per-field bit operations
        # on the packed 13-byte layout ran at a fraction of a plain reader's speed).
        bad = _dat_kernels()[0](raw["t"][i0:i1], raw["w"][i0:i1], out["t"], out["x"], out["y"], out["p"],
                                bool(check_sorted))
        if bad >= 0:
            _raise_unsorted(header, i0 + bad)
    del raw
    return out


def _raise_unsorted(header: DatHeader, bad: int):
    raise ValueError(f"{header.path}: timestamps are not sorted: event {bad} at byte "
                     f"{header.data_offset + bad * header.event_size} goes back in time")


@functools.lru_cache(maxsize=None)
def _dat_kernels():
    """(decode, first_unsorted): Numba kernels compiled on first use (nogil: threads read in parallel)."""
    import numba

    @numba.njit(nogil=True)
    def decode(raw_t, raw_w, t, x, y, p, check):
        bad = -1
        prev = np.int64(raw_t[0]) if raw_t.shape[0] else np.int64(0)
        for i in range(raw_t.shape[0]):
            ti = np.int64(raw_t[i])
            if check and bad < 0 and ti < prev:
                bad = i
            prev = ti
            w = raw_w[i]
            t[i] = ti
            x[i] = w & 0x3FFF
            y[i] = (w >> 14) & 0x3FFF
            p[i] = (w >> 28) & 1
        return bad

    @numba.njit(nogil=True)
    def first_unsorted(raw_t):
        for i in range(1, raw_t.shape[0]):
            if raw_t[i] < raw_t[i - 1]:
                return i
        return -1

    return decode, first_unsorted


def check_dat_sorted(path_or_header) -> DatHeader:
    """Stream through a DAT file once and raise if any timestamp goes backwards."""
    header = path_or_header if isinstance(path_or_header, DatHeader) else read_dat_header(path_or_header)
    if header.num_events:
        raw = _dat_memmap(header)
        bad = _dat_kernels()[1](raw["t"])
        del raw
        if bad >= 0:
            _raise_unsorted(header, bad)
    return header


def dat_time_span(path_or_header) -> tuple[int, int] | None:
    """(first, last) timestamp of a DAT file, or None when it holds no events."""
    header = path_or_header if isinstance(path_or_header, DatHeader) else read_dat_header(path_or_header)
    if header.num_events == 0:
        return None
    raw = _dat_memmap(header)
    return int(raw["t"][0]), int(raw["t"][-1])


# --------------------------------------------------------------------------------------- boxes


def normalize_boxes(arr: np.ndarray, source: str = "boxes") -> np.ndarray:
    """Any GEN1-style box array -> BOX_DTYPE, sorted by time (stable)."""
    names = arr.dtype.names or ()
    time_field = "ts" if "ts" in names else "t" if "t" in names else None
    missing = [n for n in ("x", "y", "w", "h", "class_id") if n not in names]
    if time_field is None or missing:
        need = missing + ([] if time_field else ["ts or t"])
        raise ValueError(f"{source}: box array lacks field(s) {need}; it has {list(names)}")
    out = np.empty(len(arr), BOX_DTYPE)
    out["t"] = arr[time_field]
    for name in ("x", "y", "w", "h", "class_id"):
        out[name] = arr[name]
    # GEN1 files name the score `confidence`, the 1 Mpx files and the toolbox `class_confidence`.
    conf = "class_confidence" if "class_confidence" in names else "confidence" if "confidence" in names else None
    out["class_confidence"] = arr[conf] if conf else 1.0
    if "track_id" in names:
        # uint32 kept whole; a signed copy (ids >= 2**31 wrapped negative) is reinterpreted back.
        out["track_id"] = np.asarray(arr["track_id"]).astype(np.int64) & 0xFFFFFFFF
    else:
        out["track_id"] = 0
    if len(out) > 1 and np.any(out["t"][1:] < out["t"][:-1]):
        out = out[np.argsort(out["t"], kind="stable")]
    return out


def crop_boxes(boxes: np.ndarray, sensor_size) -> np.ndarray:
    """Boxes clipped to the sensor's pixel grid [0, W-1] x [0, H-1]; boxes left with no width or height
    are dropped (boxes partly or wholly outside the frame are a labelling error in GEN1 / 1 Mpx)."""
    width, height = (int(v) for v in sensor_size)
    x0 = np.clip(boxes["x"], 0, width - 1)
    y0 = np.clip(boxes["y"], 0, height - 1)
    x1 = np.clip(boxes["x"] + boxes["w"], 0, width - 1)
    y1 = np.clip(boxes["y"] + boxes["h"], 0, height - 1)
    out = boxes.copy()
    out["x"], out["y"], out["w"], out["h"] = x0, y0, x1 - x0, y1 - y0
    return out[(out["w"] > 0) & (out["h"] > 0)]


def read_boxes(path: str | os.PathLike, sensor_size=None) -> np.ndarray:
    """Read a `_bbox.npy` label file into a BOX_DTYPE array (field `ts` renamed `t`), sorted by t;
    with `sensor_size` (W, H), cropped to the sensor (see crop_boxes)."""
    path = str(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npy box file ({exc})") from None
    if arr.dtype.names is None:
        raise ValueError(f"{path}: expected a structured box array with fields ts/t, x, y, w, h, class_id; got dtype {arr.dtype}")
    boxes = normalize_boxes(arr.reshape(-1), path)
    return boxes if sensor_size is None else crop_boxes(boxes, sensor_size)


def empty_boxes() -> np.ndarray:
    return np.zeros(0, BOX_DTYPE)


# ------------------------------------------------------------------------------- plain arrays


def _columns_to_events(x, y, t, p, source: str) -> np.ndarray:
    n = len(t)
    if not (len(x) == len(y) == len(p) == n):
        raise ValueError(f"{source}: x, y, t, p have different lengths ({len(x)}, {len(y)}, {n}, {len(p)})")
    out = np.empty(n, EVENT_DTYPE)
    out["t"], out["x"], out["y"] = t, x, y
    out["p"] = np.asarray(p) > 0  # accepts 0/1 and -1/+1 polarity conventions
    return out


def _structured_to_events(arr: np.ndarray, source: str) -> np.ndarray:
    names = arr.dtype.names
    if names is not None:
        missing = [n for n in "xytp" if n not in names]
        if missing:
            raise ValueError(f"{source}: event array lacks field(s) {missing}; it has {list(names)}")
        return _columns_to_events(arr["x"], arr["y"], arr["t"], arr["p"], source)
    if arr.ndim == 2 and arr.shape[1] == 4:  # plain (N, 4) columns in the order x, y, t, p
        return _columns_to_events(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], source)
    raise ValueError(f"{source}: expected a structured array with x, y, t, p or an (N, 4) array of x, y, t, p; got {arr.dtype} {arr.shape}")


def _load_array_events(path: str) -> np.ndarray:
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return _structured_to_events(np.load(path, allow_pickle=False), path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if {"x", "y", "t", "p"} <= keys:
                return _columns_to_events(z["x"], z["y"], z["t"], z["p"], path)
            if len(keys) == 1:
                return _structured_to_events(z[next(iter(keys))], path)
            raise ValueError(f"{path}: .npz should hold arrays x, y, t, p (or one structured events array); it has {sorted(keys)}")
    if suffix in (".h5", ".hdf5"):
        from fastvid import _gpu

        h5py = _gpu.require("h5py", "reading .h5 event files")
        with h5py.File(path, "r") as f:
            group = f["events"] if "events" in f and hasattr(f["events"], "keys") else f  # DSEC-style events/x ...
            keys = set(group.keys())
            if not {"x", "y", "t", "p"} <= keys:
                raise ValueError(f"{path}: .h5 should hold datasets x, y, t, p (at the root or under 'events/'); it has {sorted(keys)}")
            return _columns_to_events(group["x"][:], group["y"][:], group["t"][:], group["p"][:], path)
    raise ValueError(f"{path}: unknown event file type {suffix!r}; expected .dat, .raw, .npy, .npz or .h5")


def read_events(path: str | os.PathLike, t_start: int | None = None, t_end: int | None = None, **kw) -> np.ndarray:
    """Read events from .dat (memory-mapped, see read_dat), .raw (EVT 2.0/3.0, see fastvid.events.raw) or
    .npy/.npz/.h5 holding x, y, t, p.

    Returns the EVENT_DTYPE array of the events with t_start <= t < t_end. Unsorted timestamps
    raise a ValueError naming the file and the index of the first event that goes back in time.
    """
    path = str(path)
    if Path(path).suffix.lower() == ".dat":
        return read_dat(path, t_start, t_end, **kw)
    if Path(path).suffix.lower() == ".raw":  # Prophesee EVT 2.0 / 3.0 stream
        from fastvid.events.raw import read_raw

        events = read_raw(path)
        lo = 0 if t_start is None else int(np.searchsorted(events["t"], t_start, "left"))
        hi = len(events) if t_end is None else int(np.searchsorted(events["t"], t_end, "left"))
        return events[lo:max(lo, hi)]
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such event file")
    try:
        events = _load_array_events(path)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        if str(exc).startswith(path):  # our own checks already name the file
            raise
        raise ValueError(f"{path}: not a readable event file ({type(exc).__name__}: {exc})") from None
    t = events["t"]
    drops = np.flatnonzero(t[1:] < t[:-1])
    if len(drops):
        i = int(drops[0]) + 1
        raise ValueError(f"{path}: timestamps are not sorted: event {i} (t={int(t[i])}) goes back in time")
    i0 = 0 if t_start is None else int(np.searchsorted(t, t_start, "left"))
    i1 = len(t) if t_end is None else int(np.searchsorted(t, t_end, "left"))
    return events[i0:max(i0, i1)]


# ------------------------------------------------------------------------------------ writing


def write_dat(path: str | os.PathLike, events: np.ndarray, sensor_size=(304, 240), event_type: int = 0) -> Path:
    """Write EVENT_DTYPE events as a Prophesee DAT file (Version 2 header), atomically.

    Used to make GEN1-like data for benchmarks and demos; timestamps must fit uint32 and x/y 14 bits.
    """
    path = Path(path)
    t = np.asarray(events["t"], dtype=np.int64)
    if len(t) and (t.min() < 0 or t.max() > np.iinfo(np.uint32).max):
        raise ValueError(f"{path}: DAT timestamps must be in [0, 2**32) us")
    raw = np.empty(len(events), _DAT_RAW_DTYPE)
    raw["t"] = t
    raw["w"] = ((events["x"].astype(np.uint32) & _X_MASK) | ((events["y"].astype(np.uint32) & _Y_MASK) << _Y_SHIFT)
                | ((events["p"].astype(np.uint32) & 1) << _P_SHIFT))
    width, height = sensor_size
    header = (f"% Data file containing Event2D events.\n% Version 2\n% Height {int(height)}\n% Width {int(width)}\n"
              ).encode("ascii") + bytes([event_type, DAT_EVENT_SIZE])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        raw.tofile(f)
    return path
