"""Event windows -> dense tensors (histograms, voxel grids, time surfaces, event frames).

`represent(events, kind, ...)` converts one window to (C, H, W); `represent_batch(events, offsets, ...)`
converts N windows of different lengths (concatenated, offsets = N+1 boundaries) to (N, C, H, W) in ONE
kernel launch: the Numba twin (kernels/events_numba.py) on device="cpu", the CUDA C kernels
(kernels/events.cu via CuPy, on torch's current stream) on device="cuda"; "auto" picks cuda when a GPU
is visible. Kinds are listed in `REPRESENTATIONS`:

- histogram              (2, H, W)       event count per polarity (channel 0 = OFF, 1 = ON)
- stacked_histogram      (2*bins, H, W)  counts per polarity per time bin: channel p*bins + b,
                                         b = floor((t - t0) * bins / max(t1 - t0, 1)) clamped to [0, bins);
                                         optional count_clip (RVT's count_cutoff)
- stacked_histogram_rvt  (2*bins, H, W)  the same with t0/t1 = the window's first/last event always, as
                                         RVT's StackedHistogram (data/utils/representations.py) computes it
- voxel_grid             (bins, H, W)    Zhu et al. 2019 / rpg_e2vid: ts = (bins-1)(t - t0)/(t1 - t0)
                                         (t1 == t0 -> 1), bilinear in time, polarity +1/-1;
                                         bins outside [0, bins) dropped
- time_surface           (2, H, W)       exp(-(t1 - t_last(x, y, p)) / tau_us), 0 where the window has no event
- event_frame            (1, H, W)       signed sum of polarities

t0/t1 (the time bounds): the t0/t1 arguments, a scalar or one value per window, or, where they are not
given, each window's first and last event's timestamp. The loaders (`EventSequenceLoader`, the
detector's window loader) pass each window's own bounds: t0 = window start, t1 = window end, exclusive
([start, start + window) in grid mode, [T - window, T + 1) for a window ending at label time T). Their
stacked_histogram therefore splits the window's time span into `bins` equal bins of (t1 - t0) / bins
microseconds: an event at time t lands in bin floor((t - t0) * bins / (t1 - t0)), however sparse the
window is.

RVT instead stretches the bins over the events actually present: t0 = first event, t1 = last event of
the window, b = floor((t - t0) * bins / max(t1 - t0, 1)) clamped to bins - 1 (the last event lands in
the last bin). The two agree where a window's events reach its bounds (dense windows: first event at
t0, last at t1 - 1; the spans then differ by 1 us and a bin edge moves by at most 1 us) and differ on
sparse ones (e.g. events only in the first half of a window: window bounds leave the later bins empty,
RVT spreads those events over all bins). Ask for RVT's by name, `stacked_histogram_rvt`, wherever a
representation is named (loaders, configs, CLI): it ignores the t0/t1 passed and takes each window's
own first/last event, on both devices and per window of a batch (the stacked_histogram kernels run
with no bounds given). Bins are computed in exact integer arithmetic; RVT divides in float32, which
gives the same bins for every span up to 0.76 s with up to 20 bins (checked at every bin edge); on
longer spans a bin edge can move by float32 rounding. RVT stores uint8 counts clamped to its
count_cutoff (GEN1 preprocessing: 10): pass count_clip=10 (and the loader's dtype="uint8") for its values.

Events are columns t (us), x, y, p (p > 0 = ON), as a structured array (EVENT_DTYPE) or a dict of numpy
arrays / torch tensors. Events outside the sensor are dropped, not written out of bounds; pass
`return_dropped=True` to also get how many were dropped (an int for `represent`, an (N,) int64 tensor
for `represent_batch`). Empty windows give zeros.

`represent_reference` is the plain numpy (np.add.at) version used by the tests and as the benchmark
baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_BINS = 5
DEFAULT_TAU_US = 50_000.0


@dataclass(frozen=True)
class Representation:
    name: str
    channels: callable  # bins -> C
    uses_time: bool  # whether t0/t1 matter
    description: str
    # "given": the t0/t1 arguments where given, else the window's first/last event;
    # "events": always the window's first/last event (the t0/t1 arguments are ignored)
    time_bounds: str = "given"
    kernel: str = ""  # the kernel computing it, where it is a variant of another kind ("": its own name)

    @property
    def kernel_name(self) -> str:
        return self.kernel or self.name


REPRESENTATIONS: dict[str, Representation] = {
    r.name: r
    for r in (
        Representation("histogram", lambda bins: 2, False, "event count per polarity"),
        Representation("stacked_histogram", lambda bins: 2 * bins, True,
                       "counts per polarity and time bin, bins spanning [t0, t1) (the loaders: the window's bounds)"),
        Representation("stacked_histogram_rvt", lambda bins: 2 * bins, True,
                       "counts per polarity and time bin, bins spanning the window's first..last event (RVT)",
                       time_bounds="events", kernel="stacked_histogram"),
        Representation("voxel_grid", lambda bins: bins, True, "bilinear-in-time signed event volume (Zhu et al. 2019)"),
        Representation("time_surface", lambda bins: 2, True, "exp(-(t1 - t_last)/tau) per polarity"),
        Representation("event_frame", lambda bins: 1, False, "signed polarity sum"),
    )
}


def _kind(kind: str) -> Representation:
    try:
        return REPRESENTATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown event representation {kind!r}; choose one of {sorted(REPRESENTATIONS)}") from None


def _column(events, name: str):
    try:
        col = events[name]
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"events need a column {name!r} (t, x, y, p); got {getattr(events, 'dtype', None) or list(events)}") from None
    return col


def _as_numpy(col) -> np.ndarray:
    if isinstance(col, torch.Tensor):
        return col.detach().cpu().numpy()
    return np.asarray(col)


def _coords_int16(col: np.ndarray, size: int) -> np.ndarray:
    """Coordinates as int16 (int16 input is used as it is, even strided); other integer types are
    converted with values outside [0, size) set to -1, so that they are dropped instead of wrapping."""
    if col.dtype == np.int16:
        return col
    wide = col.astype(np.int64)
    return np.where((wide < 0) | (wide >= size), -1, wide).astype(np.int16)


def _polarity_int8(col: np.ndarray) -> np.ndarray:
    if col.dtype == np.int8:
        return col
    return (col > 0).astype(np.int8)


def _numpy_columns(events, sensor_size):
    """t, x, y, p as 1-D int64/int16/int16/int8 arrays: fields of EVENT_DTYPE arrays are views (no copy)."""
    width, height = sensor_size
    t = np.asarray(_as_numpy(_column(events, "t")), dtype=np.int64)
    x = _coords_int16(_as_numpy(_column(events, "x")), width)
    y = _coords_int16(_as_numpy(_column(events, "y")), height)
    p = _polarity_int8(_as_numpy(_column(events, "p")))
    if not (t.ndim == x.ndim == y.ndim == p.ndim == 1):
        raise ValueError(f"event columns must be 1-D, got shapes t {t.shape}, x {x.shape}, y {y.shape}, p {p.shape}")
    if not (len(t) == len(x) == len(y) == len(p)):
        raise ValueError(f"event columns differ in length: t {len(t)}, x {len(x)}, y {len(y)}, p {len(p)}")
    return t, x, y, p


def _window_times(value, n: int, name: str):
    """Per-window t0/t1 -> (int64 array (n,), given?)."""
    if value is None:
        return np.zeros(max(n, 1), dtype=np.int64), False
    arr = np.asarray(_as_numpy(value), dtype=np.int64).reshape(-1)
    if arr.size == 1:
        arr = np.full(n, arr[0], dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or one value per window ({n}), got shape {arr.shape}")
    return np.ascontiguousarray(arr) if n else np.zeros(1, dtype=np.int64), True


def _time_bounds(rep: Representation, t0, t1, n: int):
    """(t0s, t1s, has_t0, has_t1) for the kernels: the given bounds, or none (the kernels then take each
    window's first/last event) where the kind's bounds are its events."""
    t0s, has_t0 = _window_times(t0, n, "t0")
    t1s, has_t1 = _window_times(t1, n, "t1")
    if rep.time_bounds == "events":
        has_t0 = has_t1 = False
    return t0s, t1s, has_t0, has_t1


def _check_sensor(sensor_size):
    width, height = (int(v) for v in sensor_size)
    if not (0 < width < 32768 and 0 < height < 32768):
        raise ValueError(f"sensor_size must be (width, height) with 0 < size < 32768, got {tuple(sensor_size)}")
    return width, height


def _check_offsets(offsets, n_events: int) -> np.ndarray:
    off = np.ascontiguousarray(_as_numpy(offsets), dtype=np.int64).reshape(-1)
    if off.size < 1:
        raise ValueError("offsets must hold N+1 window boundaries, got an empty array")
    if (np.diff(off) < 0).any() or off[0] < 0 or off[-1] > n_events:
        raise ValueError(f"offsets must be non-decreasing boundaries within [0, {n_events}] (number of events), got {off[:8]}...")
    return off


def represent_batch(
    events,
    offsets,
    kind: str,
    sensor_size=(304, 240),
    bins: int = DEFAULT_BINS,
    tau_us: float = DEFAULT_TAU_US,
    t0=None,
    t1=None,
    device: str = "cpu",
    count_clip: float | None = None,
    return_dropped: bool = False,
    out_dtype: str = "float32",
):
    """N windows (events[offsets[i]:offsets[i+1]]) -> (N, C, H, W) float32 torch tensor on `device`.

    offsets: N+1 non-decreasing int64 boundaries (numpy, list or tensor). t0/t1: the time bounds of each
    window, None (each window's first/last event), a scalar, or one value per window; stacked_histogram
    bins split [t0, t1) into equal parts, stacked_histogram_rvt ignores t0/t1 and splits each window's
    first..last event as RVT does (see the module docstring). count_clip caps the counts of both
    stacked histograms (RVT's count_cutoff).
    out_dtype "uint8" (the histograms and both stacked histograms only): counts saturating at 255 (the
    stacked histograms: or at floor(count_clip)), exactly what float32 + clamp + `.to(torch.uint8)` gives; on
    the CPU the kernel counts in uint8 directly (a quarter of the output memory to write: the wall of batched
    CPU representations).
    With return_dropped=True, returns (tensor, dropped (N,) int64 tensor on `device`) where dropped counts
    each window's events outside the sensor. Events (in columns already on the GPU for device="cuda")
    are read in place; other inputs are converted to the kernels' fixed dtypes first.
    """
    rep = _kind(kind)
    width, height = _check_sensor(sensor_size)
    bins = int(bins)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if rep.name == "time_surface" and not tau_us > 0:
        raise ValueError(f"tau_us must be > 0, got {tau_us}")
    from fastvid import _gpu

    dev = torch.device(_gpu.resolve_device(device if isinstance(device, str) else str(device)))
    if out_dtype not in ("float32", "uint8"):
        raise ValueError(f"out_dtype must be 'float32' or 'uint8', got {out_dtype!r}")
    if out_dtype == "uint8":
        if rep.kernel_name not in ("histogram", "stacked_histogram"):
            raise ValueError(f"out_dtype uint8 holds event counts only (histogram and the stacked histograms), not {rep.name!r}")
        clip = count_clip if rep.kernel_name == "stacked_histogram" else None  # as for float32: RVT's, stacked only
        cap = 255.0 if clip is None else float(min(255.0, np.floor(float(clip))))
        if dev.type == "cpu":
            out, dropped = _represent_cpu(events, offsets, rep, width, height, bins, cap, t0, t1, np.uint8)
        else:
            out, dropped = represent_batch(events, offsets, kind, sensor_size, bins, tau_us, t0, t1, device, cap, True)
            out = out.to(torch.uint8)
        return (out, dropped) if return_dropped else out
    if dev.type == "cuda":
        out, dropped = _represent_cuda(events, offsets, rep, width, height, bins, tau_us, t0, t1, dev)
    elif dev.type == "cpu":
        out, dropped = _represent_cpu(events, offsets, rep, width, height, bins, tau_us, t0, t1)
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if count_clip is not None and rep.kernel_name == "stacked_histogram":
        out.clamp_(max=float(count_clip))
    return (out, dropped) if return_dropped else out


def represent(
    events,
    kind: str,
    sensor_size=(304, 240),
    bins: int = DEFAULT_BINS,
    tau_us: float = DEFAULT_TAU_US,
    t0=None,
    t1=None,
    device: str = "cpu",
    count_clip: float | None = None,
    return_dropped: bool = False,
):
    """One window -> (C, H, W) float32 torch tensor; with return_dropped=True, (tensor, int dropped).

    t0/t1: the window's time bounds (default: its first/last event; ignored by stacked_histogram_rvt,
    which always uses those); the other arguments as in `represent_batch`."""
    n_events = len(_column(events, "t"))
    out, dropped = represent_batch(events, np.array([0, n_events], dtype=np.int64), kind, sensor_size, bins, tau_us,
                                   t0, t1, device, count_clip, return_dropped=True)
    return (out[0], int(dropped[0])) if return_dropped else out[0]


def _numba_kernel(name: str):
    from fastvid.kernels import events_numba

    return getattr(events_numba, name)


def _run_numba(kernel, args, n_windows: int):
    """Run a window-parallel kernel with no more threads than windows: a single window then runs on the
    calling thread alone instead of waiting at a barrier for idle workers (which costs a lot on busy cores)."""
    import numba
    import torch

    before, torch_threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(max(1, min(before, n_windows)))
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(before)
        # Numba's OpenMP layer sets the calling thread's OpenMP thread count, which torch shares: without
        # this, a caller's torch.set_num_threads / OMP_NUM_THREADS would silently become all cores.
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def _represent_cpu(events, offsets, rep, width, height, bins, tau_us, t0, t1, dtype=np.float32):
    """dtype uint8: the saturating uint8 twin kernels, `tau_us` then being the cap."""
    t, x, y, p = _numpy_columns(events, (width, height))
    off = _check_offsets(offsets, len(t))
    n = len(off) - 1
    t0s, t1s, has_t0, has_t1 = _time_bounds(rep, t0, t1, n)
    out = np.zeros((n, rep.channels(bins), height, width), dtype=dtype)
    dropped = np.zeros(n, dtype=np.int64)
    if n:
        args = (t, x, y, p, off, t0s, t1s, has_t0, has_t1, out.reshape(n, -1), dropped, height, width, float(tau_us))
        _run_numba(_numba_kernel(rep.kernel_name + ("_u8" if dtype == np.uint8 else "")), args, n)
    return torch.from_numpy(out), torch.from_numpy(dropped)


def _cuda_columns(events, width, height, dev):
    """Columns as contiguous CUDA tensors of the kernel dtypes; CUDA torch input stays on the GPU."""
    cols = {name: _column(events, name) for name in ("t", "x", "y", "p")}
    if all(isinstance(c, torch.Tensor) and c.is_cuda for c in cols.values()):
        t = cols["t"].to(dev, torch.int64).contiguous()

        def coords(c, size):
            if c.dtype == torch.int16:
                return c.to(dev).contiguous()
            wide = c.to(dev, torch.int64)
            return torch.where((wide < 0) | (wide >= size), -1, wide).to(torch.int16)

        p = cols["p"].to(dev)
        p = p.contiguous() if p.dtype == torch.int8 else (p > 0).to(torch.int8)
        return t, coords(cols["x"], width), coords(cols["y"], height), p
    arrays = _numpy_columns(events, (width, height))
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(dev, non_blocking=True) for a in arrays)


def _represent_cuda(events, offsets, rep, width, height, bins, tau_us, t0, t1, dev):
    from fastvid import _gpu
    from fastvid.kernels import cuda

    cp = _gpu.require_cupy("the CUDA event representations")
    t, x, y, p = _cuda_columns(events, width, height, dev)
    dev = t.device
    off = _check_offsets(offsets, len(t))  # boundaries are needed on the host anyway (launch size)
    n = len(off) - 1
    t0s, t1s, has_t0, has_t1 = _time_bounds(rep, t0, t1, n)
    out = torch.zeros((n, rep.channels(bins), height, width), dtype=torch.float32, device=dev)
    dropped = torch.zeros(n, dtype=torch.int64, device=dev)
    count = int(off[-1] - off[0])
    if n == 0 or count == 0:
        return out, dropped
    off_d, t0_d, t1_d = (torch.from_numpy(a).to(dev, non_blocking=True) for a in (off, t0s, t1s))
    with cp.cuda.Device(dev.index or 0), cuda.torch_stream(dev):
        kernel = cuda.get_function("events.cu", rep.kernel_name)
        kernel(cuda.grid_for(count), (256,), (
            cuda.as_cupy(t), cuda.as_cupy(x), cuda.as_cupy(y), cuda.as_cupy(p), cuda.as_cupy(off_d), np.int32(n),
            cuda.as_cupy(t0_d), cuda.as_cupy(t1_d), np.int32(has_t0), np.int32(has_t1), np.int32(bins),
            np.float32(1.0 / float(tau_us)), np.int32(height), np.int32(width), np.int32(rep.channels(bins)),
            cuda.as_cupy(out), cuda.as_cupy(dropped)))
    return out, dropped


def represent_batch_reference(events, offsets, kind: str, sensor_size=(304, 240), bins: int = DEFAULT_BINS,
                              tau_us: float = DEFAULT_TAU_US) -> np.ndarray:
    """numpy baseline for a batch: one np.add.at pass per window into a fresh (N, C, H, W) array."""
    rep = _kind(kind)
    width, height = _check_sensor(sensor_size)
    off = _check_offsets(offsets, len(_column(events, "t")))
    out = np.zeros((len(off) - 1, rep.channels(bins), height, width), dtype=np.float32)
    for i in range(len(off) - 1):
        represent_reference(events[off[i]:off[i + 1]], kind, sensor_size, bins, tau_us, out=out[i])
    return out


def represent_reference(events, kind: str, sensor_size=(304, 240), bins: int = DEFAULT_BINS,
                        tau_us: float = DEFAULT_TAU_US, t0=None, t1=None, out=None) -> tuple[np.ndarray, int]:
    """Plain numpy version of one window (np.add.at / np.maximum.at): (array (C, H, W), dropped).

    t0/t1 as in `represent`. `out`: an optional zeroed C-contiguous float32 (C, H, W) array to fill
    (e.g. one slot of a batch)."""
    rep = _kind(kind)
    width, height = _check_sensor(sensor_size)
    t, x, y, p = _numpy_columns(events, (width, height))
    if out is None:
        out = np.zeros((rep.channels(bins), height, width), dtype=np.float32)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    dropped = int((~inside).sum())
    if len(t) == 0:
        return out, dropped
    a = int(t[0]) if t0 is None or rep.time_bounds == "events" else int(t0)
    b = int(t[-1]) if t1 is None or rep.time_bounds == "events" else int(t1)
    t, x, y, on = t[inside], x[inside].astype(np.int64), y[inside].astype(np.int64), (p[inside] > 0).astype(np.int64)
    # Flat indices into the (C, H, W) array, as rpg_e2vid's voxel grid does: np.add.at is fastest that way.
    pixel = y * width + x
    plane = height * width
    flat = out.reshape(-1)
    kernel = rep.kernel_name  # the kernel whose arithmetic this mirrors
    if kernel == "histogram":
        np.add.at(flat, on * plane + pixel, np.float32(1))
    elif kernel == "event_frame":
        np.add.at(flat, pixel, np.where(on > 0, 1, -1).astype(np.float32))
    elif kernel == "stacked_histogram":
        b_idx = np.clip(((t - a) * bins) // max(b - a, 1), 0, bins - 1)
        np.add.at(flat, (on * bins + b_idx) * plane + pixel, np.float32(1))
    elif kernel == "voxel_grid":
        scale = np.float64(bins - 1) / (np.float64(b - a) if b != a else 1.0)
        ts = (t - a).astype(np.float64) * scale
        lo = np.floor(ts)
        frac = ts - lo
        lo = lo.astype(np.int64)
        pol = np.where(on > 0, 1.0, -1.0)
        left, right = (pol * (1.0 - frac)).astype(np.float32), (pol * frac).astype(np.float32)
        ok = (lo >= 0) & (lo < bins)
        np.add.at(flat, lo[ok] * plane + pixel[ok], left[ok])
        ok = (lo + 1 >= 0) & (lo + 1 < bins)
        np.add.at(flat, (lo[ok] + 1) * plane + pixel[ok], right[ok])
    elif kernel == "time_surface":
        values = np.exp(-(b - t).astype(np.float64) / float(tau_us)).astype(np.float32)
        np.maximum.at(flat, on * plane + pixel, values)
    return out, dropped
