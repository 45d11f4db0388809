"""Reading Prophesee RAW recordings (EVT 2.0 and EVT 3.0 streams) into fastvid's event layout.

A `.raw` file is '%' header lines (``% evt 3.0``, ``% format EVT3;height=720;width=1280``,
``% geometry 1280x720`` ..., ending with ``% end``) followed by little-endian words:
* EVT 2.0: 32-bit words, type in bits 28-31: CD_OFF (0) / CD_ON (1) events carry the 6 low
  timestamp bits (22-27), x (11-21) and y (0-10); EVT_TIME_HIGH (8) carries the timestamp's upper
  28 bits.
* EVT 3.0: 16-bit words, type in bits 12-15, decoded with a running state: EVT_ADDR_Y (0) sets y,
  EVT_ADDR_X (2) emits one event at x (bits 0-10) with polarity bit 11, VECT_BASE_X (3) sets the base
  x and polarity of the vectors that follow, VECT_12 (4) / VECT_8 (5) emit an event for every set
  bit of their 12 / 8 bit mask (then advance the base x by 12 / 8), EVT_TIME_LOW (6) and
  EVT_TIME_HIGH (8) set the lower / upper 12 bits of a 24-bit time base that rolls over every
  2**24 us (counted here, so timestamps keep growing). Other word types carry no CD events.
Decoding is two compiled passes (count, then fill). Readers for EVT 2.1 are not written yet.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

import numpy as np

from fastvid.events.types import EVENT_DTYPE

ENCODINGS = ("evt2", "evt3")


@dataclass(frozen=True)
class RawHeader:
    path: str
    encoding: str  # "evt2" | "evt3"
    sensor_size: tuple[int, int] | None
    data_offset: int


def read_raw_header(path) -> RawHeader:
    path = str(path)
    encoding, width, height = None, None, None
    with open(path, "rb") as f:
        while True:
            start = f.tell()
            if f.read(1) != b"%":
                f.seek(start)
                break
            line = f.readline()
            try:
                text = line.decode("ascii").strip()
            except UnicodeDecodeError:
                raise ValueError(f"{path}: bad RAW header at byte {start}: header line is not ASCII text") from None
            if text == "end":
                break
            low = text.lower()
            m = re.match(r"evt\s+(\d)\.(\d)", low)
            if m:
                encoding = f"evt{m[1]}{'' if m[2] == '0' else m[2]}"
            if low.startswith("format"):
                fmt = low.split(None, 1)[1] if " " in low else ""
                name, *params = fmt.split(";")
                encoding = {"evt2": "evt2", "evt21": "evt21", "evt3": "evt3"}.get(name.strip(), encoding)
                for param in params:
                    key, _, value = param.partition("=")
                    if key.strip() == "width" and value.strip().isdigit():
                        width = int(value)
                    elif key.strip() == "height" and value.strip().isdigit():
                        height = int(value)
            m = re.match(r"geometry\s+(\d+)x(\d+)", low)
            if m:
                width, height = int(m[1]), int(m[2])
        offset = f.tell()
    if encoding is None:
        raise ValueError(f"{path}: the RAW header names no event format ('% evt 2.0', '% evt 3.0' or '% format EVT3')")
    if encoding not in ENCODINGS:
        raise ValueError(f"{path}: event format {encoding!r} is not supported; fastvid reads {', '.join(ENCODINGS)}")
    sensor = (width, height) if width and height else None
    return RawHeader(path, encoding, sensor, offset)


@functools.lru_cache(maxsize=None)
def _kernels():
    import numba

    @numba.njit(nogil=True)
    def evt2(words, t, x, y, p, fill):
        n = 0
        high = np.int64(0)
        for i in range(words.shape[0]):
            w = np.int64(words[i])
            kind = w >> 28
            if kind == 8:
                high = w & 0x0FFFFFFF
            elif kind <= 1:
                if fill:
                    t[n] = (high << 6) | ((w >> 22) & 0x3F)
                    x[n] = (w >> 11) & 0x7FF
                    y[n] = w & 0x7FF
                    p[n] = kind
                n += 1
        return n

    @numba.njit(nogil=True)
    def evt3(words, t, x, y, p, fill):
        n = 0
        high = np.int64(0)
        low = np.int64(0)
        wraps = np.int64(0)
        yv = 0
        base = 0
        pol = 0
        for i in range(words.shape[0]):
            w = np.int64(words[i])
            kind = w >> 12
            if kind == 8:  # EVT_TIME_HIGH
                h = w & 0xFFF
                if h < high:
                    wraps += 1
                high = h
            elif kind == 6:  # EVT_TIME_LOW
                low = w & 0xFFF
            elif kind == 0:  # EVT_ADDR_Y
                yv = w & 0x7FF
            elif kind == 2:  # EVT_ADDR_X: one event
                if fill:
                    t[n] = (wraps << 24) | (high << 12) | low
                    x[n] = w & 0x7FF
                    y[n] = yv
                    p[n] = (w >> 11) & 1
                n += 1
            elif kind == 3:  # VECT_BASE_X
                base = w & 0x7FF
                pol = (w >> 11) & 1
            elif kind == 4 or kind == 5:  # VECT_12 / VECT_8
                width = 12 if kind == 4 else 8
                for b in range(width):
                    if (w >> b) & 1:
                        if fill:
                            t[n] = (wraps << 24) | (high << 12) | low
                            x[n] = base + b
                            y[n] = yv
                            p[n] = pol
                        n += 1
                base += width
        return n

    return {"evt2": (evt2, "<u4"), "evt3": (evt3, "<u2")}


def read_raw(path, *, return_header: bool = False, check_sorted: bool = True):
    """All CD events of a RAW file as EVENT_DTYPE (or (events, RawHeader)); other word types are skipped."""
    header = read_raw_header(path)
    kernel, word = _kernels()[header.encoding]
    size = os.path.getsize(header.path) - header.data_offset
    itemsize = np.dtype(word).itemsize
    if size % itemsize:
        raise ValueError(f"{header.path}: truncated RAW file: {size} data bytes after the header is not a whole number "
                         f"of {itemsize}-byte {header.encoding.upper()} words")
    words = (np.memmap(header.path, dtype=word, mode="r", offset=header.data_offset, shape=(size // itemsize,))
             if size else np.zeros(0, word))
    # The counting pass gets field views of an empty EVENT_DTYPE array: the same argument types as the
    # filling pass, so the kernel compiles once.
    empty = np.empty(0, EVENT_DTYPE)
    n = kernel(words, empty["t"], empty["x"], empty["y"], empty["p"], False)
    out = np.empty(n, EVENT_DTYPE)
    if n:
        kernel(words, out["t"], out["x"], out["y"], out["p"], True)
    del words
    if check_sorted and n > 1:
        from fastvid.events.io import _dat_kernels

        bad = _dat_kernels()[1](out["t"])
        if bad >= 0:
            raise ValueError(f"{header.path}: timestamps are not sorted: event {bad} (t={int(out['t'][bad])}) goes back in time")
    return (out, header) if return_header else out
