"""Numba CPU twins of kernels/events.cu: event windows -> (N, C, H, W) float32 tensors.

Every kernel has ONE explicit signature (`SIGNATURE`, compiled at import or loaded from Numba's disk
cache): event columns t int64, x/y int16, p int8 in any layout (so the fields of an EVENT_DTYPE
structured array are read in place, without copies; contiguous columns convert for free), offsets/t0s/
t1s int64, out float32 (N, C*H*W) zeroed, dropped int64 (N,), then height, width and a float parameter.
Windows are independent, so the parallel loop runs over windows: each writes only its own slab (no
atomics), and sums happen in event order as np.add.at does.

Indices inside the event loops are unsigned on purpose: Numba then skips negative-index wraparound
code on every access, which makes these scatter loops about 30% faster.
"""

import numba
import numpy as np
from numba import types

_COLUMN = {dt: types.Array(dt, 1, "A", aligned=False) for dt in (types.int64, types.int16, types.int8)}
_VECTOR = types.Array(types.int64, 1, "C")
SIGNATURE = numba.void(
    _COLUMN[types.int64], _COLUMN[types.int16], _COLUMN[types.int16], _COLUMN[types.int8],  # t, x, y, p
    _VECTOR, _VECTOR, _VECTOR, types.boolean, types.boolean,  # offsets, t0s, t1s, has_t0, has_t1
    types.Array(types.float32, 2, "C"), _VECTOR,  # out (N, C*H*W), dropped (N,)
    types.int64, types.int64, types.float64,  # height, width, param
)

# The counting kinds also come as uint8 twins (RVT stores uint8 counts): the same loops into a (N, C*H*W) uint8
# output that saturates at `param` (<= 255), a quarter of the float32 output's memory traffic.
SIGNATURE_U8 = numba.void(
    _COLUMN[types.int64], _COLUMN[types.int16], _COLUMN[types.int16], _COLUMN[types.int8],
    _VECTOR, _VECTOR, _VECTOR, types.boolean, types.boolean,
    types.Array(types.uint8, 2, "C"), _VECTOR,
    types.int64, types.int64, types.float64,
)

_F32_ONE = np.float32(1.0)
_U0 = np.uint64(0)
_U1 = np.uint64(1)


@numba.njit(inline="always")
def _inside(x, y, width, height):
    """(inside the sensor?, flat pixel y*W + x as uint64); one unsigned compare per axis."""
    xu = np.uint32(np.int32(x))
    yu = np.uint32(np.int32(y))
    if xu >= np.uint32(width) or yu >= np.uint32(height):
        return False, _U0
    return True, np.uint64(yu) * np.uint64(width) + np.uint64(xu)


@numba.njit(inline="always")
def _window(t, offsets, t0s, t1s, has_t0, has_t1, n):
    """Event range [start, end) of window n (uint64) and its t0, t1 (given, or first/last event)."""
    start, end = np.uint64(offsets[n]), np.uint64(offsets[n + 1])
    a = t0s[n] if has_t0 else t[start]
    b = t1s[n] if has_t1 else t[end - _U1]
    return start, end, a, b


@numba.njit(SIGNATURE, parallel=True, cache=True)
def histogram(t, x, y, p, offsets, t0s, t1s, has_t0, has_t1, out, dropped, height, width, param):
    plane = np.uint64(height * width)
    for n in numba.prange(len(offsets) - 1):
        frame = out[n]
        nd = 0
        for i in range(np.uint64(offsets[n]), np.uint64(offsets[n + 1])):
            ok, pix = _inside(x[i], y[i], width, height)
            if not ok:
                nd += 1
                continue
            frame[pix + (plane if p[i] > 0 else _U0)] += _F32_ONE
        dropped[n] = nd


@numba.njit(SIGNATURE, parallel=True, cache=True)
def event_frame(t, x, y, p, offsets, t0s, t1s, has_t0, has_t1, out, dropped, height, width, param):
    for n in numba.prange(len(offsets) - 1):
        frame = out[n]
        nd = 0
        for i in range(np.uint64(offsets[n]), np.uint64(offsets[n + 1])):
            ok, pix = _inside(x[i], y[i], width, height)
            if not ok:
                nd += 1
                continue
            frame[pix] += _F32_ONE if p[i] > 0 else -_F32_ONE
        dropped[n] = nd


@numba.njit(inline="always")
def _bin_bounds(k, bins, span):
    """[lo, hi) of the relative times whose bin is k (k*span <= rel*bins < (k+1)*span), open at the clamped ends."""
    lo = (k * span + bins - 1) // bins if k > 0 else np.int64(-(1 << 62))
    hi = ((k + 1) * span + bins - 1) // bins if k < bins - 1 else np.int64(1 << 62)
    return lo, hi


@numba.njit(SIGNATURE, parallel=True, cache=True)
def stacked_histogram(t, x, y, p, offsets, t0s, t1s, has_t0, has_t1, out, dropped, height, width, param):
    """Bins split [t0, t1) of each window: t0s/t1s where given (the loaders: window bounds), else the
    window's first/last event, which is how stacked_histogram_rvt (RVT's convention) runs this kernel."""
    plane = np.uint64(height * width)
    bins = out.shape[1] // (2 * height * width)
    for n in numba.prange(len(offsets) - 1):
        if offsets[n + 1] <= offsets[n]:
            dropped[n] = 0
            continue
        start, end, a, b = _window(t, offsets, t0s, t1s, has_t0, has_t1, n)
        span = max(b - a, 1)
        frame = out[n]
        nd = 0
        # The bin of an event is floor((t - a) * bins / span) clamped (integer arithmetic: exact, and equal to
        # the CUDA kernel's). Events come mostly in time order, so the division runs only when an event leaves
        # the current bin's [lo, hi) range: a 64-bit division per event cost about a fifth of the kernel.
        k = np.int64(0)
        lo, hi = _bin_bounds(k, bins, span)
        lo = hi  # force the first event through the division
        for i in range(start, end):
            ok, pix = _inside(x[i], y[i], width, height)
            if not ok:
                nd += 1
                continue
            rel = t[i] - a
            if rel < lo or rel >= hi:
                k = min(max(rel * bins // span, 0), bins - 1)
                lo, hi = _bin_bounds(k, bins, span)
            channel = np.uint64(k + (bins if p[i] > 0 else 0))
            frame[channel * plane + pix] += _F32_ONE
        dropped[n] = nd


@numba.njit(SIGNATURE, parallel=True, cache=True)
def voxel_grid(t, x, y, p, offsets, t0s, t1s, has_t0, has_t1, out, dropped, height, width, param):
    plane = np.uint64(height * width)
    bins = out.shape[1] // (height * width)
    top = np.float64(bins - 1)
    for n in numba.prange(len(offsets) - 1):
        if offsets[n + 1] <= offsets[n]:
            dropped[n] = 0
            continue
        start, end, a, b = _window(t, offsets, t0s, t1s, has_t0, has_t1, n)
        scale = top / (np.float64(b - a) if b != a else 1.0)
        frame = out[n]
        nd = 0
        for i in range(start, end):
            ok, pix = _inside(x[i], y[i], width, height)
            if not ok:
                nd += 1
                continue
            ts = np.float64(t[i] - a) * scale
            pol = 1.0 if p[i] > 0 else -1.0
            if ts >= 0.0 and ts < top:  # the common case: both neighbouring bins exist
                lo = np.uint64(ts)
                frac = ts - np.float64(lo)
                j = lo * plane + pix
                frame[j] += np.float32(pol * (1.0 - frac))
                frame[j + plane] += np.float32(pol * frac)
            else:  # before t0, at t1 or after: keep only the bins inside [0, bins)
                lo_f = np.floor(ts)
                lo_i = int(lo_f)
                frac = ts - lo_f
                if 0 <= lo_i < bins:
                    frame[np.uint64(lo_i) * plane + pix] += np.float32(pol * (1.0 - frac))
                if 0 <= lo_i + 1 < bins:
                    frame[np.uint64(lo_i + 1) * plane + pix] += np.float32(pol * frac)
        dropped[n] = nd


@numba.njit(SIGNATURE, parallel=True, cache=True)
def time_surface(t, x, y, p, offsets, t0s, t1s, has_t0, has_t1, out, dropped, height, width, param):
    """param = tau in microseconds."""
    plane = np.uint64(height * width)
    for n in numba.prange(len(offsets) - 1):
        if offsets[n + 1] <= offsets[n]:
            dropped[n] = 0
            continue
        start, end, a, b = _window(t, offsets, t0s, t1s, has_t0, has_t1, n)
        frame = out[n]
        nd = 0
        for i in range(start, end):
            ok, pix = _inside(x[i], y[i], width, height)
            if not ok:
                nd += 1
                continue
            v = np.float32(np.exp(-np.float64(b - t[i]) / param))
            j = pix + (plane if p[i] > 0 else _U0)
            if v > frame[j]:
                frame[j] = v
        dropped[n] = nd


@numba.njit(SIGNATURE_U8, parallel=True, cache=True)
def histogram_u8(t, x, y, p, offsets, t0s, t1s, has_t0, has_t1, out, dropped, height, width, param):
    plane = np.uint64(height * width)
    cap = np.uint8(min(max(param, 0.0), 255.0))
    for n in numba.prange(len(offsets) - 1):
        frame = out[n]
        nd = 0
        for i in range(np.uint64(offsets[n]), np.uint64(offsets[n + 1])):
            ok, pix = _inside(x[i], y[i], width, height)
            if not ok:
                nd += 1
                continue
            j = pix + (plane if p[i] > 0 else _U0)
            if frame[j] < cap:
                frame[j] += np.uint8(1)
        dropped[n] = nd


@numba.njit(SIGNATURE_U8, parallel=True, cache=True)
def stacked_histogram_u8(t, x, y, p, offsets, t0s, t1s, has_t0, has_t1, out, dropped, height, width, param):
    """stacked_histogram's loop (same bins, same clamping) into saturating uint8 counts."""
    plane = np.uint64(height * width)
    bins = out.shape[1] // (2 * height * width)
    cap = np.uint8(min(max(param, 0.0), 255.0))
    for n in numba.prange(len(offsets) - 1):
        if offsets[n + 1] <= offsets[n]:
            dropped[n] = 0
            continue
        start, end, a, b = _window(t, offsets, t0s, t1s, has_t0, has_t1, n)
        span = max(b - a, 1)
        frame = out[n]
        nd = 0
        k = np.int64(0)
        lo, hi = _bin_bounds(k, bins, span)
        lo = hi
        for i in range(start, end):
            ok, pix = _inside(x[i], y[i], width, height)
            if not ok:
                nd += 1
                continue
            rel = t[i] - a
            if rel < lo or rel >= hi:
                k = min(max(rel * bins // span, 0), bins - 1)
                lo, hi = _bin_bounds(k, bins, span)
            j = np.uint64(k + (bins if p[i] > 0 else 0)) * plane + pix
            if frame[j] < cap:
                frame[j] += np.uint8(1)
        dropped[n] = nd
