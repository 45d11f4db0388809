"""The block layout of an event sample's columns (layout version 2): a time index, so that a window read
touches and decompresses only its blocks, in one of three codecs (zstd, lz4, none), with every
decompressed size bounded by what the sample declares.

Field ``events.evb``, little-endian:

    0      b"FVEB"                 magic
    4      uint32 J                length of the JSON header
    8      JSON header             {"layout": 2, "codec", "n", "t0", "block_us", "blocks", "time", "xy", "check"}
    8+J    uint32 counts[blocks]   events per block
           uint32 sizes[blocks]    stored (compressed) bytes per block
           uint32 crc32[blocks]    CRC-32 of each block's stored bytes (only with "check": "crc32")
           the blocks, back to back

Block k holds the events with t0 + k*block_us <= t < t0 + (k+1)*block_us, its columns one after the other:

* time "delta-u8" / "delta-u16" / "delta-u32": t minus the previous event's t (the block's first event:
  minus the block start), in the smallest type that fits the segment; "raw-i64": absolute t;
* xy "split": x uint16, y uint16, then p bit-packed (np.packbits order, ceil(count/8) bytes);
  "packed": one uint32 per event, x | y << 14 | p << 28 (the DAT word).

Each block is compressed alone (a zstd frame with its checksum, or a raw LZ4 block / stored bytes whose
CRC-32 is in the table, so bit rot is an error, not wrong events), so blocks decode
independently (in CPU threads, or as one nvCOMP batch on the GPU), and a block's decoded size follows
from its count: a block that decodes to any other size, counts that do not add up to the declared number
of events, or a block table that runs past the field are refused before anything large is allocated.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib

import numpy as np

MAGIC = b"FVEB"
LAYOUT_VERSION = 2
BLOCK_CODECS = ("zstd", "lz4", "none")
TIME_LAYOUTS = ("delta", "raw")
XY_LAYOUTS = ("split", "packed")
DEFAULT_BLOCK_MS = 5.0
_DELTA_TYPES = {"delta-u8": np.uint8, "delta-u16": np.uint16, "delta-u32": np.uint32}
_MAX_HEADER = 1 << 16  # the JSON header is ~150 bytes; anything near this is not ours

_local = threading.local()


def _zstd():
    import zstandard

    return zstandard


def _lz4_block():
    try:
        import lz4.block
    except ImportError as exc:
        raise ValueError(f"the lz4 event codec needs the lz4 package ({exc}); pip install lz4") from None
    return lz4.block


def zstd_decompress_bounded(data, limit: int, exact: int | None = None):
    """Decompress one zstd frame into at most `limit` bytes (exactly `exact` when given), refusing, before
    allocating, a frame whose header declares more: a small frame can declare gigabytes."""
    zstd = _zstd()
    try:
        declared = zstd.frame_content_size(data)
    except zstd.ZstdError as exc:
        raise ValueError(f"corrupt zstd data ({exc})") from None
    if declared > limit or (exact is not None and declared >= 0 and declared != exact):
        want = f"exactly {exact}" if exact is not None else f"at most {limit}"
        raise ValueError(f"zstd frame declares {declared} decompressed bytes where the sample allows {want}")
    dec = getattr(_local, "zstd", None)
    if dec is None:
        dec = _local.zstd = zstd.ZstdDecompressor()
    try:
        out = dec.decompress(data, max_output_size=max(int(limit), 1))
    except zstd.ZstdError as exc:
        raise ValueError(f"corrupt zstd data or more than the declared {limit} bytes ({exc})") from None
    if exact is not None and len(out) != exact:
        raise ValueError(f"zstd frame decompressed to {len(out)} bytes, the sample declares {exact}")
    return out


def _decompress(codec: str, data, size: int):
    """One block's stored bytes -> exactly `size` bytes."""
    if codec == "none":
        out = data
    elif codec == "lz4":
        try:
            out = _lz4_block().decompress(data, uncompressed_size=size) if size else b""
        except Exception as exc:  # lz4.block.LZ4BlockError
            raise ValueError(f"corrupt lz4 block or more than the declared {size} bytes ({exc})") from None
    elif codec == "zstd":
        out = zstd_decompress_bounded(data, size, size)
    else:
        raise ValueError(f"unknown block codec {codec!r}")
    if len(out) != size:
        raise ValueError(f"a {codec} block holds {len(out)} bytes where its event count needs {size}")
    return out


def _compress(codec: str, raw: bytes, level: int) -> bytes:
    if codec == "none" or not raw:
        return raw
    if codec == "lz4":
        block = _lz4_block()
        if level > 1:  # LZ4 HC: smaller, slower to write, as fast to read
            return block.compress(raw, mode="high_compression", compression=min(level, 12), store_size=False)
        return block.compress(raw, store_size=False)
    # The frame checksum makes bit rot a clear error instead of silently wrong events.
    return _zstd().ZstdCompressor(level=level, write_checksum=True).compress(raw)


def _time_bytes(time: str) -> int:
    return 8 if time == "raw-i64" else np.dtype(_DELTA_TYPES[time]).itemsize


def block_nbytes(count: int, time: str, xy: str) -> int:
    """Decoded bytes of a block of `count` events."""
    # x and y: 2 + 2 bytes (split) or one 4-byte word with p inside (packed); split adds the p bits.
    return count * (_time_bytes(time) + 4) + (0 if xy == "packed" else (count + 7) // 8)


def _smallest_delta(max_dt: int) -> str:
    for name, dtype in _DELTA_TYPES.items():
        if max_dt <= np.iinfo(dtype).max:
            return name
    raise ValueError(f"a time step of {max_dt} us does not fit 32 bits; use a smaller block")


def encode_blocks(events: np.ndarray, t0: int, codec: str = "lz4", level: int = 1, block_ms: float = DEFAULT_BLOCK_MS,
                  time: str = "delta", xy: str = "split") -> bytes:
    """``events.evb`` bytes of sorted `events` (EVENT_DTYPE) of a segment starting at t0."""
    if codec not in BLOCK_CODECS:
        raise ValueError(f"unknown block codec {codec!r}; choose one of {', '.join(BLOCK_CODECS)}")
    if time not in TIME_LAYOUTS or xy not in XY_LAYOUTS:
        raise ValueError(f"time must be one of {TIME_LAYOUTS} and xy one of {XY_LAYOUTS}, got {time!r}, {xy!r}")
    block_us = int(round(block_ms * 1000))
    if not 1 <= block_us <= 1 << 31:
        raise ValueError(f"block_ms must be positive (and at most ~35 minutes), got {block_ms}")
    t = events["t"].astype(np.int64)
    if len(t) and t[0] < t0:
        raise ValueError(f"event at t={int(t[0])} is before the segment start {t0}")
    if len(t) > 1 and (np.diff(t) < 0).any():
        raise ValueError("events are not sorted by time")
    blocks = int((t[-1] - t0) // block_us + 1) if len(t) else 0
    edges = np.searchsorted(t, t0 + np.arange(blocks + 1, dtype=np.int64) * block_us, "left")
    edges[-1] = len(t)
    counts = np.diff(edges).astype(np.uint32)
    if time == "delta":
        dt = np.diff(t, prepend=np.int64(t0))
        starts = edges[:-1][counts > 0]
        dt[starts] = t[starts] - (t0 + np.flatnonzero(counts > 0).astype(np.int64) * block_us)
        time_layout = _smallest_delta(int(dt.max()) if len(dt) else 0)
        tcol = dt.astype(_DELTA_TYPES[time_layout])
    else:
        time_layout, tcol = "raw-i64", t
    x = events["x"].astype(np.uint16)
    y = events["y"].astype(np.uint16)
    p = events["p"].astype(np.uint8) & 1
    if xy == "packed":
        if len(x) and (int(x.max()) >= 1 << 14 or int(y.max()) >= 1 << 14):
            raise ValueError("coordinates above 16383 do not fit the packed xy layout; use xy='split'")
        word = x.astype(np.uint32) | (y.astype(np.uint32) << 14) | (p.astype(np.uint32) << 28)
    payload, sizes, crcs = [], np.zeros(blocks, np.uint32), np.zeros(blocks, np.uint32)
    for k in range(blocks):
        a, b = int(edges[k]), int(edges[k + 1])
        if xy == "packed":
            raw = tcol[a:b].tobytes() + word[a:b].tobytes()
        else:
            raw = tcol[a:b].tobytes() + x[a:b].tobytes() + y[a:b].tobytes() + np.packbits(p[a:b]).tobytes()
        data = _compress(codec, raw, level)
        sizes[k] = len(data)
        crcs[k] = zlib.crc32(data)
        payload.append(data)
    check = "zstd" if codec == "zstd" else "crc32"
    header = json.dumps({"layout": LAYOUT_VERSION, "codec": codec, "n": int(len(t)), "t0": int(t0), "block_us": block_us,
                         "blocks": blocks, "time": time_layout, "xy": xy, "check": check}, separators=(",", ":")).encode()
    table = [counts.tobytes(), sizes.tobytes()] + ([crcs.tobytes()] if check == "crc32" else [])
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *table, *payload])


class BlockIndex:
    """The parsed header and block table of an ``events.evb`` field (what a window read needs first).

    `parse(head)` takes the field's first bytes (at least `needed`: call it with more when it says so)."""

    def __init__(self, header: dict, counts: np.ndarray, sizes: np.ndarray, crcs, payload_start: int):
        self.header = header
        self.codec = header["codec"]
        self.n = int(header["n"])
        self.t0 = int(header["t0"])
        self.block_us = int(header["block_us"])
        self.time = header["time"]
        self.xy = header["xy"]
        self.counts = counts
        self.sizes = sizes
        self.crcs = crcs  # None: the codec checks itself (zstd frame checksums)
        self.event_offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.byte_offsets = payload_start + np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    @staticmethod
    def table_end(head) -> int:
        """How many leading bytes of the field hold the header and block table."""
        if len(head) < 8 or bytes(head[:4]) != MAGIC:
            raise ValueError("not an events.evb field (bad magic)")
        (jlen,) = struct.unpack_from("<I", head, 4)
        if jlen > _MAX_HEADER:
            raise ValueError(f"events.evb header of {jlen} bytes is implausible")
        if len(head) < 8 + jlen:
            return 8 + jlen
        header = BlockIndex._header(head, jlen)
        return 8 + jlen + (12 if header["check"] == "crc32" else 8) * header["blocks"]

    @staticmethod
    def _header(head, jlen: int) -> dict:
        try:
            header = json.loads(bytes(head[8:8 + jlen]))
            ok = (isinstance(header, dict) and header.get("layout") == LAYOUT_VERSION
                  and header.get("codec") in BLOCK_CODECS and header.get("xy") in XY_LAYOUTS
                  and (header.get("time") in _DELTA_TYPES or header.get("time") == "raw-i64")
                  and all(isinstance(header.get(k), int) and not isinstance(header.get(k), bool)
                          for k in ("n", "t0", "block_us", "blocks"))
                  and header["n"] >= 0 and header["blocks"] >= 0 and header["block_us"] > 0
                  and header.get("check") == ("zstd" if header["codec"] == "zstd" else "crc32"))
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise ValueError("events.evb header is not a layout-2 header")
        return header

    @classmethod
    def parse(cls, head, field_size: int) -> "BlockIndex":
        end = cls.table_end(head)
        if end > field_size:
            raise ValueError(f"events.evb block table ends at byte {end}, past the field's {field_size} bytes")
        if len(head) < end:
            raise ValueError(f"events.evb needs its first {end} bytes to be parsed, got {len(head)}")
        (jlen,) = struct.unpack_from("<I", head, 4)
        header = cls._header(head, jlen)
        blocks = header["blocks"]
        counts = np.frombuffer(head, np.uint32, blocks, 8 + jlen)
        sizes = np.frombuffer(head, np.uint32, blocks, 8 + jlen + 4 * blocks)
        crcs = np.frombuffer(head, np.uint32, blocks, 8 + jlen + 8 * blocks) if header["check"] == "crc32" else None
        if int(counts.sum(dtype=np.int64)) != header["n"]:
            raise ValueError(f"events.evb blocks hold {int(counts.sum(dtype=np.int64))} events, its header says {header['n']}")
        index = cls(header, counts, sizes, crcs, end)
        if int(index.byte_offsets[-1]) > field_size:
            raise ValueError(f"events.evb blocks end at byte {int(index.byte_offsets[-1])}, past the field's {field_size} bytes")
        return index

    def check(self, num_events: int | None, segment_t0: int | None) -> None:
        """The header must agree with the sample's json: its event count bounds every decompression."""
        if num_events is not None and self.n != int(num_events):
            raise ValueError(f"events.evb holds {self.n} events, the sample's json declares {num_events}")
        if segment_t0 is not None and self.t0 != int(segment_t0):
            raise ValueError(f"events.evb starts at t0={self.t0}, the sample's json says {segment_t0}")

    def block_range(self, t0: int | None, t1: int | None) -> tuple[int, int]:
        """Blocks [k_lo, k_hi) that hold the events with t0 <= t < t1 (None: open end)."""
        blocks = len(self.counts)
        lo = 0 if t0 is None else min(max((int(t0) - self.t0) // self.block_us, 0), blocks)
        hi = blocks if t1 is None else min(max(-(-(int(t1) - self.t0) // self.block_us), 0), blocks)
        return lo, max(lo, hi)

    def byte_range(self, k_lo: int, k_hi: int) -> tuple[int, int]:
        return int(self.byte_offsets[k_lo]), int(self.byte_offsets[k_hi])

    def decode(self, payload, k_lo: int, k_hi: int, payload_offset: int, t0=None, t1=None) -> dict:
        """Columns {"t": int64, "x": int16, "y": int16, "p": int8} of blocks [k_lo, k_hi) cut to t0 <= t < t1;
        `payload` holds the field's bytes from `payload_offset` on (at least up to the last block's end)."""
        first, last = int(self.event_offsets[k_lo]), int(self.event_offsets[k_hi])
        n = last - first
        cols = {"t": np.empty(n, np.int64), "x": np.empty(n, np.int16), "y": np.empty(n, np.int16), "p": np.empty(n, np.int8)}
        view = memoryview(payload)
        ks = [k for k in range(k_lo, k_hi) if self.counts[k]]
        sizes = [block_nbytes(int(self.counts[k]), self.time, self.xy) for k in ks]
        parts = []
        for k, size in zip(ks, sizes):
            a = int(self.byte_offsets[k]) - payload_offset
            stored = view[a:a + int(self.sizes[k])]
            if self.crcs is not None and zlib.crc32(stored) != int(self.crcs[k]):
                raise ValueError(f"block {k} fails its CRC-32 check (the stored bytes are damaged)")
            parts.append(_decompress(self.codec, stored, size))
        if ks:
            # Stored blocks are contiguous in the field already: decode them in place, without a copy.
            raw = np.frombuffer(view[int(self.byte_offsets[ks[0]]) - payload_offset:int(self.byte_offsets[ks[-1] + 1])
                                     - payload_offset] if self.codec == "none" else b"".join(parts), np.uint8)
            counts = self.counts[ks].astype(np.int64)
            raw_offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
            if self.codec == "none":  # empty blocks hold no bytes, so the stored offsets are the decoded ones
                raw_offsets = self.byte_offsets[ks + [ks[-1] + 1]] - self.byte_offsets[ks[0]]
            starts = self.t0 + np.asarray(ks, np.int64) * self.block_us
            _fill_blocks()(raw, raw_offsets, counts, starts, self.block_us, _time_bytes(self.time),
                           self.time == "raw-i64", self.xy == "packed", cols["t"], cols["x"], cols["y"], cols["p"])
        if n and ((t0 is not None and cols["t"][0] < t0) or (t1 is not None and cols["t"][-1] >= t1)):
            lo = 0 if t0 is None else int(np.searchsorted(cols["t"], t0, "left"))
            hi = n if t1 is None else int(np.searchsorted(cols["t"], t1, "left"))
            cols = {k: v[lo:hi] for k, v in cols.items()}
        return cols


def _fill_blocks():
    """The compiled block decoder (fastvid.kernels.blocks_numba), imported on first use."""
    from fastvid.kernels.blocks_numba import fill_blocks

    return fill_blocks


def parse_index(data, num_events: int | None = None, segment_t0: int | None = None) -> BlockIndex:
    """The BlockIndex of whole ``events.evb`` bytes, checked against the sample's json (its declared
    ``num_events`` and ``t0``, when given)."""
    index = BlockIndex.parse(memoryview(data)[:BlockIndex.table_end(data)], len(data))
    index.check(num_events, segment_t0)
    return index


def decode_blocks(data, t0=None, t1=None, num_events: int | None = None, segment_t0: int | None = None) -> dict:
    """Whole ``events.evb`` bytes -> columns of the events with t0 <= t < t1 (None: all); only the blocks that
    overlap the window are decompressed. num_events / segment_t0: what the sample's json declares (checked)."""
    index = parse_index(data, num_events, segment_t0)
    k_lo, k_hi = index.block_range(t0, t1)
    return index.decode(data, k_lo, k_hi, 0, t0, t1)


def block_layout_info(data) -> dict:
    """The header of an ``events.evb`` field (codec, n, block_us, blocks, time, xy)."""
    return dict(BlockIndex.parse(memoryview(data)[:BlockIndex.table_end(data)], len(data)).header)
