"""Numba decoder of the event block layout (fastvid.events.blocks): decoded blocks -> event columns.

One compiled pass over every block of a window (time deltas summed from the block start, x/y copied, polarity
bits unpacked), instead of half a dozen numpy calls per block: with 5 ms blocks those calls cost as much as
the decompression. Also checks what the header cannot: every block's times stay inside the block, so the
decoded columns are sorted and windows can be cut by binary search. nogil: reader threads decode in parallel.
"""

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, inline="always")
def _le(raw, pos, nbytes):
    """The little-endian unsigned integer of `nbytes` (1, 2, 4 or 8) bytes at raw[pos]."""
    if nbytes == 1:
        return np.int64(raw[pos])
    if nbytes == 2:
        return np.int64(raw[pos]) | (np.int64(raw[pos + 1]) << 8)
    v = np.int64(0)
    for k in range(nbytes):
        v |= np.int64(raw[pos + k]) << np.int64(8 * k)
    return v


@numba.njit(nogil=True, cache=True)
def _fill_blocks_impl(raw, raw_offsets, counts, starts, block_us, tsize, raw_time, packed, t, x, y, p):
    """Returns -1 when all is well, else the index of the first block whose times leave it."""
    out = 0
    for b in range(len(counts)):
        c = counts[b]
        base = raw_offsets[b]
        start = starts[b]
        acc = start
        if raw_time:
            for j in range(c):
                t[out + j] = _le(raw, base + j * 8, 8)
        elif tsize == 1:  # the common case (dense recordings): a plain running sum of bytes
            for j in range(c):
                acc += np.int64(raw[base + j])
                t[out + j] = acc
        else:
            for j in range(c):
                acc += _le(raw, base + j * tsize, tsize)
                t[out + j] = acc
        if c > 0:
            if t[out] < start or t[out + c - 1] >= start + block_us:
                return b
            if raw_time:
                for j in range(1, c):
                    if t[out + j] < t[out + j - 1]:
                        return b
        xy = base + c * tsize
        if packed:
            for j in range(c):
                w = _le(raw, xy + 4 * j, 4)
                x[out + j] = np.int16(w & 0x3FFF)
                y[out + j] = np.int16((w >> 14) & 0x3FFF)
                p[out + j] = np.int8((w >> 28) & 1)
        else:
            for j in range(c):
                x[out + j] = np.int16(_le(raw, xy + 2 * j, 2))
            for j in range(c):
                y[out + j] = np.int16(_le(raw, xy + 2 * c + 2 * j, 2))
            bits = xy + 4 * c
            for j in range(c):
                p[out + j] = np.int8((raw[bits + (j >> 3)] >> (7 - (j & 7))) & 1)  # np.packbits order
        out += c
    return -1


def fill_blocks(raw, raw_offsets, counts, starts, block_us, tsize, raw_time, packed, t, x, y, p) -> None:
    """Decode blocks k (bytes raw[raw_offsets[k]:], counts[k] events starting at time starts[k]) into t/x/y/p."""
    bad = _fill_blocks_impl(raw, np.ascontiguousarray(raw_offsets, np.int64), np.ascontiguousarray(counts, np.int64),
                            np.ascontiguousarray(starts, np.int64), np.int64(block_us), np.int64(tsize), bool(raw_time),
                            bool(packed), t, x, y, p)
    if bad >= 0:
        raise ValueError(f"block {bad} of the window's blocks has times outside it or out of order "
                         f"(block [{int(starts[bad])}, {int(starts[bad]) + int(block_us)}) us)")


@numba.njit(nogil=True, cache=True)
def _scatter_sparse_impl(gaps, values, flat):
    """flat[cumsum(gaps)[i]] = values[i]; returns -1, or the first position that runs past flat."""
    pos = np.int64(0)
    size = flat.shape[0]
    for i in range(gaps.shape[0]):
        pos += np.int64(gaps[i])
        if pos >= size:
            return i
        flat[pos] = values[i]
    return -1


def scatter_sparse(gaps, values, flat) -> None:
    """Write a sparse-coded window (fastvid.events.precompute) into the 1-D view `flat` (zeroed already)."""
    bad = _scatter_sparse_impl(gaps, values, flat)
    if bad >= 0:
        raise ValueError(f"sparse window indexes past its {flat.shape[0]} cells (entry {bad})")
