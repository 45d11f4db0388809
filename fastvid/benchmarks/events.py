"""`fastvid bench events`: events/s of every event representation, single window and batched, per device.

Windows look like Prophesee GEN1 (about 33k events per 50 ms on a 304x240 sensor). Each kind is timed
on the CPU (Numba) and, when a GPU is visible, on CUDA (input columns already on the GPU), one window
per call ("single") and `--batch` windows per call ("batched"). numpy's np.add.at version runs in the
same process on the same windows as the baseline, so the ratios hold even on a busy machine: single-window
calls and the baseline are interleaved round-robin, and the median (and the best) time is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fastvid.benchmarks.common import device_info, kernel_devices, median_seconds, write_json
from fastvid.events.types import EVENT_DTYPE, GEN1_SENSOR_SIZE

ALL_KINDS = ("histogram", "stacked_histogram", "voxel_grid", "time_surface", "event_frame")


def add_arguments(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "all"],
                   help="where to run the kernels (auto: cuda if visible, plus cpu)")
    p.add_argument("--kinds", nargs="+", default=list(ALL_KINDS), choices=list(ALL_KINDS))
    p.add_argument("--events-per-window", type=int, default=33_000)
    p.add_argument("--window-us", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=16, help="windows per batched call on the CPU")
    p.add_argument("--cuda-batch", type=int, default=128,
                   help="windows per batched call on the GPU (a GPU needs millions of events per launch)")
    p.add_argument("--bins", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median reported)")
    p.add_argument("--json", default=None, help="write the result here ('-' prints it)")


def synthetic_windows(n_windows: int, events_per_window: int, window_us: int, sensor_size=GEN1_SENSOR_SIZE, seed=0):
    """Concatenated GEN1-like windows (time-sorted inside each) and their N+1 offsets."""
    rng = np.random.default_rng(seed)
    width, height = sensor_size
    n = n_windows * events_per_window
    ev = np.zeros(n, EVENT_DTYPE)
    starts = np.repeat(np.arange(n_windows, dtype=np.int64) * window_us, events_per_window)
    ev["t"] = starts + np.sort(rng.integers(0, window_us, (n_windows, events_per_window)), axis=1).ravel()
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["p"] = rng.integers(0, 2, n)
    offsets = np.arange(n_windows + 1, dtype=np.int64) * events_per_window
    return ev, offsets


@dataclass
class EventsBench:
    """Options of `run_benchmark` (the CLI flags' defaults)."""

    device: str = "auto"                  # "auto" (cuda if visible, plus cpu), "cpu", "cuda" or "all"
    kinds: tuple[str, ...] = ALL_KINDS    # representations to time
    events_per_window: int = 33_000
    window_us: int = 50_000
    batch: int = 16                       # windows per batched call on the CPU
    bins: int = 5
    repeats: int = 20                     # timed calls per measurement (median reported)
    sensor_size: tuple[int, int] = GEN1_SENSOR_SIZE  # (width, height)
    cuda_batch: int = 128                 # windows per batched call on the GPU
    quick: bool = False                   # shrink repeats and batches: a smoke run
    progress: bool = True                 # tqdm progress bar
    work_dir: str | None = None           # accepted for `bench all` (unused: the windows are generated in memory)


def run_benchmark(options: EventsBench) -> dict:
    """Measure every (kind, device, single/batched) plus the np.add.at baseline; returns a JSON-ready dict."""
    from tqdm import tqdm

    o = options
    if o.quick:
        o = replace(o, repeats=min(o.repeats, 5), batch=min(o.batch, 4), cuda_batch=min(o.cuda_batch, 16))
    devices = kernel_devices(o.device, "events")
    ev, offsets = synthetic_windows(max(o.batch, o.cuda_batch if "cuda" in devices else 0), o.events_per_window,
                                    o.window_us, o.sensor_size)
    rows = []
    jobs = [(kind, dev) for kind in o.kinds for dev in devices]
    for kind, dev in tqdm(jobs, desc="bench events", disable=not o.progress):
        rows += _time_kind(o, kind, dev, ev, offsets)
    speedups = _speedups(rows, o.kinds)
    return {
        "benchmark": "events",
        "device_info": device_info(),
        "config": {"events_per_window": o.events_per_window, "window_us": o.window_us, "batch": o.batch,
                   "cuda_batch": o.cuda_batch if "cuda" in devices else None, "bins": o.bins,
                   "repeats": o.repeats, "sensor_size": list(o.sensor_size), "statistic": "median",
                   "input": "structured numpy array on cpu; torch CUDA columns already on the GPU for cuda"},
        "results": rows,
        "speedup_vs_numpy_add_at": speedups,
        "targets": {"voxel_grid numba single >= 5x np.add.at": speedups.get(_speedup_key("voxel_grid", "cpu", "single")),
                    "voxel_grid numba batched >= 5x np.add.at (batched)": speedups.get(
                        _speedup_key("voxel_grid", "cpu", "batched")),
                    "voxel_grid cuda batched >= 20e9 events/s": next(
                        (r["events_per_s"] for r in rows if r["kind"] == "voxel_grid" and r["device"] == "cuda"
                         and r["mode"] == "batched"), None)},
    }


def _time_kind(o: EventsBench, kind: str, dev: str, ev, offsets) -> list[dict]:
    """The rows of one kind on one device: single-window and batched calls, plus the numpy baselines on the CPU."""
    import torch

    from fastvid.events.representations import represent, represent_batch, represent_batch_reference, represent_reference

    sensor_size, bins = o.sensor_size, o.bins
    one = ev[:o.events_per_window]
    n_batch = o.cuda_batch if dev == "cuda" else o.batch
    batch_offsets = offsets[:n_batch + 1]
    if dev == "cuda":
        cols = {k: torch.from_numpy(np.ascontiguousarray(ev[k][:batch_offsets[-1]])).cuda() for k in ("t", "x", "y", "p")}
        one_cols = {k: v[:o.events_per_window] for k, v in cols.items()}
        sync = torch.cuda.synchronize
    else:
        cols, one_cols, sync = ev[:batch_offsets[-1]], one, None
    # Single-window calls and the numpy baseline are interleaved with each other; batched calls are
    # timed on their own, so the worker threads they wake do not slow the single-threaded ones down.
    single = {"single": lambda: represent(one_cols, kind, sensor_size, bins=bins, device=dev)}
    if dev == "cpu":
        single["numpy_add_at"] = lambda: represent_reference(one, kind, sensor_size, bins=bins)
    batched = {"batched": lambda: represent_batch(cols, batch_offsets, kind, sensor_size, bins=bins, device=dev)}
    if dev == "cpu":  # the same windows into one fresh (N, C, H, W) array: the fair batched baseline
        batched["numpy_add_at_batched"] = lambda: represent_batch_reference(cols, batch_offsets, kind, sensor_size,
                                                                            bins=bins)
    seconds, best = median_seconds(single, o.repeats, sync, with_min=True)
    seconds_b, best_b = median_seconds(batched, o.repeats, sync, with_min=True)
    seconds.update(seconds_b)
    best.update(best_b)
    rows = []
    for mode, sec in seconds.items():
        is_batch = mode.startswith("batched") or mode.endswith("_batched")
        n_events = int(batch_offsets[-1]) if is_batch else o.events_per_window
        rows.append({"kind": kind, "device": dev, "mode": mode,
                     "implementation": "numpy np.add.at" if mode.startswith("numpy") else
                     {"cpu": "numba", "cuda": "cupy cuda"}[dev],
                     "windows": n_batch if is_batch else 1, "events": n_events,
                     "ms_per_call": sec * 1e3, "events_per_s": n_events / sec,
                     "best_ms_per_call": best[mode] * 1e3, "best_events_per_s": n_events / best[mode]})
    return rows


def _speedups(rows: list[dict], kinds) -> dict:
    """Single calls are compared with the single-window baseline, batched calls with the batched one
    (the GPU's batched calls too: the CPU numpy baseline is what they replace)."""
    speedups = {}
    for kind in kinds:
        base = {m: next((r for r in rows if r["kind"] == kind and r["mode"] == m), None)
                for m in ("numpy_add_at", "numpy_add_at_batched")}
        for r in rows:
            if r["kind"] != kind or r["mode"].startswith("numpy"):
                continue
            ref = base["numpy_add_at_batched" if r["mode"] == "batched" else "numpy_add_at"]
            if ref:
                speedups[_speedup_key(kind, r["device"], r["mode"])] = r["events_per_s"] / ref["events_per_s"]
    return speedups


def _speedup_key(kind: str, device: str, mode: str) -> str:
    """e.g. 'voxel_grid_cpu_single_vs_np_add_at' (a self-describing ratio name for `bench all`'s chart)."""
    return f"{kind}_{device}_{mode}_vs_np_add_at"


def format_table(result: dict) -> str:
    lines = [f"{'kind':18} {'device':6} {'mode':20} {'Mevents/s':>10} {'ms/call':>9} {'x np.add.at':>11}"]
    for r in result["results"]:
        sp = result["speedup_vs_numpy_add_at"].get(_speedup_key(r["kind"], r["device"], r["mode"]))
        lines.append(f"{r['kind']:18} {r['device']:6} {r['mode']:20} {r['events_per_s'] / 1e6:10.1f} "
                     f"{r['ms_per_call']:9.3f} {'' if sp is None else f'{sp:11.1f}'}")
    return "\n".join(lines)


def run(args) -> int:
    result = run_benchmark(EventsBench(device=args.device, kinds=tuple(args.kinds), events_per_window=args.events_per_window,
                                       window_us=args.window_us, batch=args.batch, bins=args.bins, repeats=args.repeats,
                                       cuda_batch=args.cuda_batch))
    print(format_table(result))
    single = result["targets"]["voxel_grid numba single >= 5x np.add.at"]
    batched = result["targets"]["voxel_grid numba batched >= 5x np.add.at (batched)"]
    if single is not None:
        print(f"voxel_grid: Numba CPU is {single:.1f}x (single window) and {batched:.1f}x (batch of {result['config']['batch']}) numpy "
              f"np.add.at (target >= 5x) on {result['device_info']['device']}")
    gpu = result["targets"]["voxel_grid cuda batched >= 20e9 events/s"]
    if gpu is not None:
        print(f"voxel_grid: CUDA batched {gpu / 1e9:.1f} billion events/s (target >= 20 on one H100)")
    write_json(result, args.json)
    return 0
