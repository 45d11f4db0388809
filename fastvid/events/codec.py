"""The event shard sample format: field names, key rules, and the bytes of each field.

A sample (key ``<recording>_s<segment:06d>``) holds
* the segment's events, compact: timestamps delta-encoded (the first one relative to the segment
  start t0) in the smallest unsigned type that fits, x/y as uint16, polarities bit-packed, as the
  columns of an .npz, in one of three codecs (`EVENT_CODECS`):
  ``events.npz.zst`` ("zstd", the default): the stored .npz in one Zstandard frame
  (`zstd -d` then ``np.load`` reads it); ``events.npz`` ("deflate": each column deflate-compressed
  inside the .npz; "stored": not compressed), which ``np.load`` reads as it is. Zstandard level 1
  packs these columns a little smaller than deflate level 1 and decodes several times faster
  (deflate's inflate was the loader's bottleneck; see bench/results/events-io-cpu.json);
* ``boxes.npy``: the boxes (BOX_DTYPE) whose timestamp falls in the segment;
* ``json``: {"recording", "segment", "t0", "t1", "sensor_size": [W, H], "num_events", "num_boxes",
  "source", "recording_t_end"} (``recording_t_end``: one past the recording's last event or box, so
  readers know where the real data ends inside the last, padded segment).

* or, layout version 2 (``"layout_version": 2`` in the json), ``events.evb``: the block layout of
  fastvid.events.blocks (a time index of fixed-duration blocks, each compressed alone with zstd,
  lz4 or none), so that a window's read decompresses only its blocks (`decode_window`).

Every decode is bounded by what the sample declares (its json's ``num_events``): a compressed column that
would decode to more, columns of other lengths than declared, or a frame that declares a larger size, are
refused before anything large is allocated (a 47 KB zstd frame can otherwise declare gigabytes).

Pure encode/decode of bytes; no file or shard-set I/O here.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np

from fastvid.events import io as evio
from fastvid.events import blocks
from fastvid.events.types import EVENT_DTYPE

EVENTS_EXT = "events.npz"
EVENTS_ZST_EXT = "events.npz.zst"
EVENTS_EVB_EXT = "events.evb"
EVENT_EXTS = (EVENTS_EVB_EXT, EVENTS_ZST_EXT, EVENTS_EXT)
EVENT_CODECS = ("zstd", "deflate", "stored")  # of the npz layout (version 1)
EVENT_LAYOUTS = ("blocks", "npz")
NPZ_SLACK_BYTES = 1 << 16  # zip + .npy headers of the five members, with room to spare
BOXES_EXT = "boxes.npy"
META_EXT = "json"
SEGMENT_KEY = re.compile(r"^(?P<rec>.+)_s(?P<seg>\d{6})$")


def sanitize_key(name: str) -> str:
    """A recording name usable in a webdataset key (no dots, slashes or whitespace)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name)


def segment_key(recording: str, segment: int) -> str:
    return f"{sanitize_key(recording)}_s{segment:06d}"


def parse_segment_key(key: str) -> tuple[str, int] | None:
    """(sanitized recording, segment index) of a sample key, or None when it is not an event segment key."""
    m = SEGMENT_KEY.match(key.rsplit("/", 1)[-1])
    return (m["rec"], int(m["seg"])) if m else None


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


def encode_event_field(events: np.ndarray, t0: int, codec: str = "zstd", level: int = 1, layout: str = "npz",
                       **block_options) -> tuple[str, bytes]:
    """(field extension, bytes) of a segment's events.

    layout "npz" (version 1): `codec` "zstd" (levels 1-19), "deflate" (1-9) or "stored"; level 0 means stored.
    layout "blocks" (version 2, ``events.evb``): `codec` "zstd" (1-19), "lz4" (1 fast, 2-12 HC) or "none";
    block_options: block_ms, time ("delta"/"raw"), xy ("split"/"packed"), see fastvid.events.blocks.
    """
    if layout == "blocks":
        codec = "none" if codec == "stored" or level == 0 else codec
        return EVENTS_EVB_EXT, blocks.encode_blocks(events, t0, codec, level, **block_options)
    if layout != "npz":
        raise ValueError(f"unknown event layout {layout!r}; choose one of {', '.join(EVENT_LAYOUTS)}")
    if codec not in EVENT_CODECS:
        raise ValueError(f"unknown event codec {codec!r}; choose one of {', '.join(EVENT_CODECS)}")
    if codec == "stored" or level == 0:
        return EVENTS_EXT, encode_events(events, t0, 0)
    if codec == "deflate":
        return EVENTS_EXT, encode_events(events, t0, level)
    if not 1 <= level <= 19:
        raise ValueError(f"zstd level must be 1 to 19 (0 = stored), got {level}")
    # The frame checksum makes bit rot a clear error instead of silently wrong events.
    return EVENTS_ZST_EXT, blocks._zstd().ZstdCompressor(level=level, write_checksum=True).compress(encode_events(events, t0, 0))


def npz_bytes_limit(num_events: int) -> int:
    """The most bytes an npz-layout sample of `num_events` events can decompress to (widest dt: 8 bytes)."""
    n = int(num_events)
    return n * (8 + 2 + 2) + (n + 7) // 8 + NPZ_SLACK_BYTES


def decode_event_field(ext: str, data: bytes, t0: int, columns: bool = True, num_events: int | None = None):
    """Inverse of encode_event_field: columns (see decode_event_columns) or an EVENT_DTYPE array.

    num_events: the count the sample's json declares; decompression stops at what that many events can
    take, and the columns must hold exactly that many (None: the field's own count is trusted)."""
    if ext == EVENTS_EVB_EXT:
        cols = blocks.decode_blocks(data, num_events=num_events, segment_t0=t0)
        return cols if columns else _structured(cols)
    if ext == EVENTS_ZST_EXT:
        limit = npz_bytes_limit(num_events) if num_events is not None else 1 << 62
        data = blocks.zstd_decompress_bounded(data, limit)
    elif ext != EVENTS_EXT:
        raise ValueError(f"unknown events field {ext!r}; expected one of {EVENT_EXTS}")
    cols = decode_event_columns(data, t0, num_events)
    return cols if columns else _structured(cols)


def decode_window(fields: dict, t0: int | None, t1: int | None) -> dict:
    """Columns {"t", "x", "y", "p"} of a sample's events with t0 <= t < t1 (None: open end).

    fields: {ext: bytes} with the sample's json and events field. In the block layout only the blocks that
    overlap the window are decompressed; older layouts are decoded whole and cut. Stable signature for
    loaders; `SegmentReader.read_window` also reads only the window's bytes from the tar."""
    meta = json.loads(fields[META_EXT])
    ext = events_field(fields)
    if ext is None:
        raise KeyError(f"no events field ({' or '.join(EVENT_EXTS)})")
    if ext == EVENTS_EVB_EXT:
        return blocks.decode_blocks(fields[ext], t0, t1, meta.get("num_events"), meta["t0"])
    cols = decode_event_field(ext, fields[ext], meta["t0"], True, meta.get("num_events"))
    t = cols["t"]
    lo = 0 if t0 is None else int(np.searchsorted(t, t0, "left"))
    hi = len(t) if t1 is None else int(np.searchsorted(t, t1, "left"))
    return {k: v[lo:hi] for k, v in cols.items()}


def events_field(fields) -> str | None:
    """Which events extension a sample has (None: none)."""
    return next((ext for ext in EVENT_EXTS if ext in fields), None)


def _npy_member(zf: zipfile.ZipFile, name: str, count: int | None, kinds: str) -> np.ndarray:
    """One .npy member of an npz, read without trusting its sizes: the member, its header's shape and its
    data must all fit `count` elements (None: a scalar) before anything is read."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ValueError(f"npz has no column {name}") from None
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.kind not in kinds or dtype.hasobject or fortran:
            raise ValueError(f"column {name} has dtype {dtype}, expected {kinds!r} kinds")
        want = () if count is None else (count,)
        if tuple(shape) != want:
            raise ValueError(f"column {name} holds shape {tuple(shape)}, the sample declares {want}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size > nbytes + 4096:
            raise ValueError(f"column {name} decompresses to {info.file_size} bytes, its {want} elements need {nbytes}")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"column {name} is cut short ({len(data)} of {nbytes} bytes)")
    return np.frombuffer(data, dtype).reshape(shape)


def decode_event_columns(data: bytes, t0: int, num_events: int | None = None) -> dict:
    """encode_events bytes -> contiguous columns {"t": int64, "x": int16, "y": int16, "p": int8}
    (the layout the representation kernels read, so loaders skip the structured-array copies).
    num_events: the declared count every column must match (None: the npz's own count)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        n = int(_npy_member(zf, "n.npy", None, "iu"))
        if num_events is not None and n != int(num_events):
            raise ValueError(f"the events hold {n} events, the sample's json declares {num_events}")
        if n < 0 or n > len(data) * 2048:  # no codec inside an npz packs an event into fewer bits
            raise ValueError(f"the events declare {n} events in {len(data)} bytes")
        dt = _npy_member(zf, "dt.npy", n, "u")
        x = _npy_member(zf, "x.npy", n, "u")
        y = _npy_member(zf, "y.npy", n, "u")
        p = _npy_member(zf, "p.npy", (n + 7) // 8, "u")
    t = np.cumsum(dt, dtype=np.int64)
    t += int(t0)
    # x/y are < 2**14 (DAT packing), so the uint16 storage reinterprets as int16 without a copy.
    return {"t": t, "x": x.astype(np.uint16, copy=False).view(np.int16), "y": y.astype(np.uint16, copy=False).view(np.int16),
            "p": np.unpackbits(p.astype(np.uint8, copy=False), count=n).view(np.int8)}


def _structured(cols: dict) -> np.ndarray:
    out = np.empty(len(cols["t"]), EVENT_DTYPE)
    for name, col in cols.items():
        out[name] = col
    return out


def decode_events(data: bytes, t0: int) -> np.ndarray:
    """Inverse of encode_events: EVENT_DTYPE array with absolute timestamps."""
    return _structured(decode_event_columns(data, t0))


def encode_boxes(boxes: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(boxes, evio.BOX_DTYPE), allow_pickle=False)
    return buf.getvalue()


def decode_boxes(data: bytes) -> np.ndarray:
    """boxes.npy bytes -> BOX_DTYPE (shards written before `class_confidence` are normalized too)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    # The header's shape must fit the bytes that follow it (a 100-byte file can declare a billion boxes).
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > len(data):
        raise ValueError(f"boxes.npy declares shape {tuple(shape)}, more than its {len(data)} bytes hold")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    return arr if arr.dtype == evio.BOX_DTYPE else evio.normalize_boxes(arr, "boxes.npy")


def decode_sample(fields: dict, columns: bool = False) -> dict:
    """{ext: bytes} of one sample -> {"events", "boxes", "meta"}; events as EVENT_DTYPE, or as a
    dict of columns with `columns=True`. Decompression is bounded by the json's ``num_events``."""
    meta = json.loads(fields[META_EXT])
    ext = events_field(fields)
    if ext is None:
        raise KeyError(f"no events field ({' or '.join(EVENT_EXTS)})")
    return {
        "events": decode_event_field(ext, fields[ext], meta["t0"], columns, meta.get("num_events")),
        "boxes": decode_boxes(fields[BOXES_EXT]) if BOXES_EXT in fields else evio.empty_boxes(),
        "meta": meta,
    }
