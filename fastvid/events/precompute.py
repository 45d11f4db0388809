"""Representations precomputed into event shards (RVT's practice: stacked histograms at a fixed window,
stored as uint8), read back as tensors without touching the events.

`fastvid shard events ... --precompute stacked_histogram:window_ms=50:bins=10` adds one field per spec to
every segment sample, ``<kind>_w<window_us>_b<bins>.evr``, little-endian:

    0      b"FVER"                 magic
    4      uint32 J                length of the JSON header
    8      JSON header             {"kind", "bins", "window_us", "t0", "windows", "shape": [C, H, W], "dtype": "uint8",
                                    "codec", "encoding", "count_cutoff", "time_bounds": "window"}
    8+J    uint32 sizes[windows]   stored bytes per window
           uint32 raw[windows]     decoded bytes per window (before the codec)
           the windows, back to back, each compressed alone (zstd, lz4 or none), encoded as
           "dense":  the (C, H, W) uint8 array;
           "sparse": uint8 k, uint32 m, then the m nonzero cells' flat indices as gaps (first: the index)
                     in uint8/16/32 (k = 1, 2, 4 bytes), then their m uint8 counts. Event histograms are
                     mostly zeros (a 50 ms GEN1 window fills ~3% of its cells), so this is ~10x smaller
                     than dense and decodes by one scatter into a zeroed batch.

Window w covers t0 + w*window_us <= t < t0 + (w+1)*window_us: the grid of `EventSequenceLoader` in grid
mode (segments start on it, which is why window_ms must divide the segment duration). Its representation
is fastvid.events.represent's with the window bounds as t0/t1 (the loader's convention), counts
saturated at `count_cutoff` (at most 255, the uint8 range). A window decodes to exactly its table's size,
at most what its shape can hold, and its indices must stay inside the shape; anything else is refused.
"""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np

from fastvid.events import blocks

MAGIC = b"FVER"
PRECOMPUTE_KINDS = ("stacked_histogram", "histogram")
ENCODINGS = ("sparse", "dense")
_GAP_TYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32}
REP_SUFFIX = ".evr"


@dataclasses.dataclass(frozen=True)
class RepresentationSpec:
    kind: str
    window_us: int
    bins: int = 10
    count_cutoff: int = 255
    encoding: str = "sparse"

    @property
    def ext(self) -> str:
        """The sample field that holds this representation."""
        return f"{self.kind}_w{self.window_us}_b{self.bins}{REP_SUFFIX}"

    @property
    def channels(self) -> int:
        return 2 * self.bins if self.kind == "stacked_histogram" else 2

    def describe(self) -> str:
        return (f"{self.kind}:window_ms={self.window_us / 1000:g}:bins={self.bins}:count_cutoff={self.count_cutoff}"
                f":encoding={self.encoding}")


def parse_spec(text: str, segment_ms: float | None = None) -> RepresentationSpec:
    """'stacked_histogram:window_ms=50:bins=10[:count_cutoff=255][:encoding=sparse]' -> RepresentationSpec (checked)."""
    kind, *items = str(text).split(":")
    if kind not in PRECOMPUTE_KINDS:
        raise ValueError(f"--precompute {text!r}: kind must be one of {', '.join(PRECOMPUTE_KINDS)}")
    values = {"window_ms": None, "bins": "10", "count_cutoff": "255", "encoding": "sparse"}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in values:
            raise ValueError(f"--precompute {text!r}: expected name=value with names {', '.join(values)}, got {item!r}")
        values[name] = value
    try:
        window_us = int(round(float(values["window_ms"]) * 1000)) if values["window_ms"] is not None else 0
        bins, cutoff = int(values["bins"]), int(values["count_cutoff"])
    except ValueError:
        raise ValueError(f"--precompute {text!r}: window_ms is a number, bins and count_cutoff integers") from None
    if window_us <= 0 or not 1 <= bins <= 64 or not 1 <= cutoff <= 255 or values["encoding"] not in ENCODINGS:
        raise ValueError(f"--precompute {text!r}: needs window_ms > 0, 1 <= bins <= 64, 1 <= count_cutoff <= 255, "
                         f"encoding one of {', '.join(ENCODINGS)}")
    if segment_ms is not None and int(round(segment_ms * 1000)) % window_us:
        raise ValueError(f"--precompute {text!r}: window_ms must divide --segment-ms ({segment_ms:g}) so that windows "
                         "tile every segment on the loader's grid")
    return RepresentationSpec(kind, window_us, bins if kind == "stacked_histogram" else 1, cutoff, values["encoding"])


def compute_windows(cols, t0: int, windows: int, spec: RepresentationSpec, sensor_size) -> np.ndarray:
    """(windows, C, H, W) uint8 of the grid windows starting at t0 (events as columns or EVENT_DTYPE)."""
    from fastvid.events.representations import represent_batch

    t = np.asarray(cols["t"])
    starts = t0 + np.arange(windows + 1, dtype=np.int64) * spec.window_us
    offsets = np.searchsorted(t, starts, "left").astype(np.int64)
    width, height = (int(v) for v in sensor_size)
    out = np.empty((windows, spec.channels, height, width), np.uint8)
    for w in range(windows):  # one window at a time: a float32 batch of a 1 Mpx segment would be ~1 GB
        a, b = int(offsets[w]), int(offsets[w + 1])
        x = represent_batch({k: cols[k][a:b] for k in ("t", "x", "y", "p")}, np.array([0, b - a]), spec.kind,
                            (width, height), bins=spec.bins, t0=starts[w], t1=starts[w + 1], device="cpu",
                            count_clip=float(spec.count_cutoff))
        out[w] = x[0].numpy().clip(0, 255)
    return out


def _sparse_bytes(rep: np.ndarray) -> bytes:
    flat = rep.reshape(-1)
    idx = np.flatnonzero(flat)
    gaps = np.diff(idx, prepend=0) if len(idx) else idx
    k = next(k for k, dtype in _GAP_TYPES.items() if not len(gaps) or int(gaps.max()) <= np.iinfo(dtype).max)
    return struct.pack("<BI", k, len(idx)) + gaps.astype(_GAP_TYPES[k]).tobytes() + flat[idx].tobytes()


def encode_representation(events, t0: int, t1: int, spec: RepresentationSpec, sensor_size, codec: str = "lz4",
                          level: int = 1) -> bytes:
    """The ``.evr`` field of a segment [t0, t1): every grid window's representation, compressed alone."""
    windows = max(0, -(-(int(t1) - int(t0)) // spec.window_us))
    reps = compute_windows(events, int(t0), windows, spec, sensor_size)
    raws = [_sparse_bytes(r) if spec.encoding == "sparse" else np.ascontiguousarray(r).tobytes() for r in reps]
    chunks = [blocks._compress(codec, raw, level) for raw in raws]
    header = json.dumps({"kind": spec.kind, "bins": spec.bins, "window_us": spec.window_us, "t0": int(t0),
                         "windows": windows, "shape": list(reps.shape[1:]), "dtype": "uint8", "codec": codec,
                         "encoding": spec.encoding, "count_cutoff": spec.count_cutoff, "time_bounds": "window"},
                        separators=(",", ":")).encode()
    sizes = np.array([len(c) for c in chunks], np.uint32)
    raw_sizes = np.array([len(r) for r in raws], np.uint32)
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, sizes.tobytes(), raw_sizes.tobytes(), *chunks])


class RepIndex:
    """Header and window table of an ``.evr`` field (`parse(head, field_size)`, like fastvid.events.blocks.BlockIndex)."""

    def __init__(self, header: dict, sizes: np.ndarray, raw_sizes: np.ndarray, payload_start: int):
        self.header = header
        self.shape = tuple(int(v) for v in header["shape"])
        self.codec = header["codec"]
        self.encoding = header["encoding"]
        self.sizes = sizes
        self.raw_sizes = raw_sizes
        self.byte_offsets = payload_start + np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    @staticmethod
    def table_end(head) -> int:
        if len(head) < 8 or bytes(head[:4]) != MAGIC:
            raise ValueError("not a precomputed representation field (bad magic)")
        (jlen,) = struct.unpack_from("<I", head, 4)
        if jlen > 1 << 16:
            raise ValueError(f"representation header of {jlen} bytes is implausible")
        if len(head) < 8 + jlen:
            return 8 + jlen
        return 8 + jlen + 8 * RepIndex._header(head, jlen)["windows"]

    @staticmethod
    def _header(head, jlen: int) -> dict:
        try:
            h = json.loads(bytes(head[8:8 + jlen]))
            ok = (isinstance(h, dict) and h.get("codec") in blocks.BLOCK_CODECS and h.get("dtype") == "uint8"
                  and h.get("encoding") in ENCODINGS
                  and isinstance(h.get("windows"), int) and h["windows"] >= 0 and isinstance(h.get("shape"), list)
                  and len(h["shape"]) == 3 and all(isinstance(v, int) and 0 < v < 1 << 16 for v in h["shape"]))
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise ValueError("not a precomputed representation header")
        return h

    @classmethod
    def parse(cls, head, field_size: int) -> "RepIndex":
        end = cls.table_end(head)
        if end > field_size or len(head) < end:
            raise ValueError(f"representation window table ends at byte {end}, past the {min(field_size, len(head))} bytes read")
        (jlen,) = struct.unpack_from("<I", head, 4)
        header = cls._header(head, jlen)
        sizes = np.frombuffer(head, np.uint32, header["windows"], 8 + jlen)
        raw_sizes = np.frombuffer(head, np.uint32, header["windows"], 8 + jlen + 4 * header["windows"])
        index = cls(header, sizes, raw_sizes, end)
        cells = int(np.prod(index.shape))
        most = cells if index.encoding == "dense" else 5 + 5 * cells
        if len(raw_sizes) and int(raw_sizes.max()) > most:
            raise ValueError(f"a window declares {int(raw_sizes.max())} decoded bytes, more than its shape can need ({most})")
        if int(index.byte_offsets[-1]) > field_size:
            raise ValueError(f"representation windows end at byte {int(index.byte_offsets[-1])}, past the field's {field_size}")
        return index

    def windows_of(self, windows) -> np.ndarray:
        n = len(self.sizes)
        w = np.arange(n) if windows is None else np.asarray(windows, np.int64).reshape(-1)
        if len(w) and (w.min() < 0 or w.max() >= n):
            raise IndexError(f"window {int(w.max() if w.max() >= n else w.min())} out of the segment's {n}")
        return w

    def decode(self, payload, windows, payload_offset: int = 0, out=None, out_zeroed: bool = False) -> np.ndarray:
        """(len(windows), C, H, W) uint8, or written into `out` (any numeric dtype, e.g. a float32 batch slice;
        out_zeroed: it holds zeros already, as np.zeros gives, so sparse windows skip clearing it)."""
        w = self.windows_of(windows)
        if out is None:
            out, out_zeroed = np.zeros((len(w), *self.shape), np.uint8), True
        elif out.shape != (len(w), *self.shape):
            raise ValueError(f"out has shape {out.shape}, the windows need {(len(w), *self.shape)}")
        view = memoryview(payload)
        for i, k in enumerate(w):
            a = int(self.byte_offsets[k]) - payload_offset
            raw = blocks._decompress(self.codec, view[a:a + int(self.sizes[k])], int(self.raw_sizes[k]))
            if self.encoding == "dense":
                out[i] = np.frombuffer(raw, np.uint8, int(np.prod(self.shape))).reshape(self.shape)
            else:
                _scatter_sparse(raw, out[i].reshape(-1), out_zeroed)
        return out


def _scatter_sparse(raw, flat: np.ndarray, zeroed: bool) -> None:
    """Write a sparse window into `flat` (zeros unless it is `zeroed` already, then its nonzero cells)."""
    k, m = struct.unpack_from("<BI", raw, 0)
    if k not in _GAP_TYPES or 5 + m * (k + 1) != len(raw):
        raise ValueError(f"sparse window of {len(raw)} bytes does not hold {m} cells of {k}-byte gaps")
    from fastvid.kernels.blocks_numba import scatter_sparse

    if not zeroed:
        flat[:] = 0
    # One compiled pass (running index + store), the same for uint8 and float32 batches.
    scatter_sparse(np.frombuffer(raw, _GAP_TYPES[k], m, 5), np.frombuffer(raw, np.uint8, m, 5 + m * k), flat)


def decode_representation(data, windows=None, out=None, out_zeroed: bool = False) -> np.ndarray:
    """Whole ``.evr`` bytes -> (n, C, H, W) uint8 of `windows` (indices into the segment's grid; None: all)."""
    index = RepIndex.parse(memoryview(data)[:RepIndex.table_end(data)], len(data))
    return index.decode(data, windows, 0, out, out_zeroed)
