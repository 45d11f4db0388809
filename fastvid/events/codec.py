"""The event shard sample format: field names, key rules, and the bytes of each field.

A sample (key ``<recording>_s<segment:06d>``) holds
* the segment's events, compact: timestamps delta-encoded (the first one relative to the segment
  start t0) in the smallest unsigned type that fits, x/y as uint16, polarities bit-packed, as the
  columns of an .npz, in one of three codecs (`EVENT_CODECS`):
  ``events.npz.zst`` ("zstd", the default): the stored .npz in one Zstandard frame
  (`zstd -d` then ``np.load`` reads it); ``events.npz`` ("deflate": each column deflate-compressed
  inside the .npz; "stored": not compressed), which ``np.load`` reads as it is. Zstandard level 1
  packs these columns a little smaller than deflate level 1 and decodes several times faster
  (deflate's inflate was the loader's bottleneck; see bench/results/events-codec-cpu.json);
* ``boxes.npy``: the boxes (BOX_DTYPE) whose timestamp falls in the segment;
* ``json``: {"recording", "segment", "t0", "t1", "sensor_size": [W, H], "num_events", "num_boxes",
  "source", "recording_t_end"} (``recording_t_end``: one past the recording's last event or box, so
  readers know where the real data ends inside the last, padded segment).

Pure encode/decode of bytes; no file or shard-set I/O here.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np

from fastvid.events import io as evio
from fastvid.events.types import EVENT_DTYPE

EVENTS_EXT = "events.npz"
EVENTS_ZST_EXT = "events.npz.zst"
EVENT_EXTS = (EVENTS_ZST_EXT, EVENTS_EXT)
EVENT_CODECS = ("zstd", "deflate", "stored")
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


def _zstd():
    import zstandard

    return zstandard


def encode_event_field(events: np.ndarray, t0: int, codec: str = "zstd", level: int = 1) -> tuple[str, bytes]:
    """(field extension, bytes) of a segment's events in `codec` ("zstd" levels 1-19, "deflate" 1-9,
    "stored"; level 0 means stored for every codec)."""
    if codec not in EVENT_CODECS:
        raise ValueError(f"unknown event codec {codec!r}; choose one of {', '.join(EVENT_CODECS)}")
    if codec == "stored" or level == 0:
        return EVENTS_EXT, encode_events(events, t0, 0)
    if codec == "deflate":
        return EVENTS_EXT, encode_events(events, t0, level)
    if not 1 <= level <= 19:
        raise ValueError(f"zstd level must be 1 to 19 (0 = stored), got {level}")
    # The frame checksum makes bit rot a clear error instead of silently wrong events.
    return EVENTS_ZST_EXT, _zstd().ZstdCompressor(level=level, write_checksum=True).compress(encode_events(events, t0, 0))


def decode_event_field(ext: str, data: bytes, t0: int, columns: bool = True):
    """Inverse of encode_event_field: columns (see decode_event_columns) or an EVENT_DTYPE array."""
    if ext == EVENTS_ZST_EXT:
        try:
            data = _zstd().ZstdDecompressor().decompress(data)
        except _zstd().ZstdError as exc:
            raise ValueError(f"corrupt zstd data ({exc})") from None
    elif ext != EVENTS_EXT:
        raise ValueError(f"unknown events field {ext!r}; expected one of {EVENT_EXTS}")
    return decode_event_columns(data, t0) if columns else decode_events(data, t0)


def events_field(fields) -> str | None:
    """Which events extension a sample has (None: none)."""
    return next((ext for ext in EVENT_EXTS if ext in fields), None)


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
    """boxes.npy bytes -> BOX_DTYPE (shards written before `class_confidence` are normalized too)."""
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    return arr if arr.dtype == evio.BOX_DTYPE else evio.normalize_boxes(arr, "boxes.npy")


def decode_sample(fields: dict, columns: bool = False) -> dict:
    """{ext: bytes} of one sample -> {"events", "boxes", "meta"}; events as EVENT_DTYPE, or as a
    dict of columns with `columns=True`."""
    meta = json.loads(fields[META_EXT])
    ext = events_field(fields)
    if ext is None:
        raise KeyError(f"no events field ({' or '.join(EVENT_EXTS)})")
    return {
        "events": decode_event_field(ext, fields[ext], meta["t0"], columns),
        "boxes": decode_boxes(fields[BOXES_EXT]) if BOXES_EXT in fields else evio.empty_boxes(),
        "meta": meta,
    }
