"""`fastvid bench events-shards`: event windows -> stacked histograms, every way fastvid offers, in ONE run.

On the same GEN1-like recordings (generated: uniform random x/y, so compression numbers are a worst case)
and the same grid windows, at steady state (one untimed pass each, then `repeats` timed passes, the paths
interleaved round-robin so that a busy machine slows them all alike), it times:

* ``dat``: the no-shard baseline, per window `read_dat(t0, t1)` + one `represent` call (issue 19's
  reference path); ``dat_batched``: the same reads, represented `batch` windows per call into one fresh
  (B, C, H, W) tensor, as a DAT-reading loader would;
* ``shards:<layout>``: `EventSequenceLoader` end to end over a shard set written in each layout and codec
  (events/s, windows/s, and its per-stage seconds), plus, per layout and interleaved over the layouts, the
  decode of whole segments alone (one thread) and random 50 ms window reads through
  `SegmentReader.read_window` (what the block index saves);
* ``windows->uint8:<layout>``: the read functions a pipeline builds on, `SegmentReader.read_window` per
  window in 2 threads (only the window's blocks) + one uint8 `represent_batch` per batch (RVT's dtype);
  ``dat (uint8 kernel)`` is the baseline with the same uint8 kernel, for a like-for-like ratio;
* ``precomputed``: the stacked histograms stored in the shards (`--precompute`), read with
  `SegmentReader.read_representation` into a float32 (and a uint8) batch;
* ``loader uint8``: `EventSequenceLoader` with uint8 output over the set that holds them, reading them
  (``precomputed``) or the events (``events``), with its default producer thread and without one;
* ``floor: output <dtype> batches only``: allocating and touching the (B, C, H, W) batches alone, no events:
  no CPU path that hands out fresh batches can beat it;
* ``gpu:<layout>`` (CUDA only): columns decompressed with nvCOMP on the GPU, then the CUDA kernels;
* ``tonic``: tonic's `ToFrame` (n_time_bins = bins) on the DAT windows, when tonic is installed.

Every path reports events/s and windows/s (median and best of the repeats) and its ratio to ``dat``.
`run_benchmark(EventsShardsBench(...)) -> dict`; the CLI writes bench/results/events-shards-<device>.json.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# name -> fastvid.events.writing.EventLayout fields (layout, codec, level, block options)
LAYOUTS = {
    "npz-zstd (v1 default)": dict(layout="npz", codec="zstd"),
    "blocks-zstd": dict(layout="blocks", codec="zstd"),
    "blocks-lz4": dict(layout="blocks", codec="lz4"),
    "blocks-none": dict(layout="blocks", codec="none", level=0),
    "blocks-lz4-packed-xy": dict(layout="blocks", codec="lz4", xy="packed"),
    "blocks-lz4-raw-t": dict(layout="blocks", codec="lz4", time="raw"),
    "blocks-lz4-1ms": dict(layout="blocks", codec="lz4", block_ms=1.0),
    "blocks-lz4-25ms": dict(layout="blocks", codec="lz4", block_ms=25.0),
}
QUICK_LAYOUTS = ("npz-zstd (v1 default)", "blocks-lz4", "blocks-none")


def _windows(src: Path, window_us: int) -> list[tuple[Path, int]]:
    """(dat, t0) of every grid window of every recording (the generated recordings start at 0, as the loader's grid)."""
    from fastvid.events.io import dat_time_span

    out = []
    for dat in sorted(src.glob("*_td.dat")):
        span = dat_time_span(dat)
        if span is not None:
            out.extend((dat, t0) for t0 in range(span[0] // window_us * window_us, span[1] + 1, window_us))
    return out


def _dat_per_window(windows, window_us, bins, sensor_size) -> tuple[int, int]:
    from fastvid.events.io import read_dat
    from fastvid.events.representations import represent

    events = 0
    for dat, t0 in windows:
        ev = read_dat(dat, t0, t0 + window_us)
        represent(ev, "stacked_histogram", sensor_size, bins=bins, t0=t0, t1=t0 + window_us)
        events += len(ev)
    return events, len(windows)


def _dat_batched(windows, window_us, bins, sensor_size, batch) -> tuple[int, int]:
    from fastvid.events.io import read_dat
    from fastvid.events.representations import represent_batch

    events = 0
    for i in range(0, len(windows), batch):
        part = windows[i:i + batch]
        evs = [read_dat(dat, t0, t0 + window_us) for dat, t0 in part]
        offsets = np.concatenate([[0], np.cumsum([len(e) for e in evs])]).astype(np.int64)
        t0s = np.array([t0 for _, t0 in part], np.int64)
        represent_batch(np.concatenate(evs), offsets, "stacked_histogram", sensor_size, bins=bins, t0=t0s,
                        t1=t0s + window_us)
        events += int(offsets[-1])
    return events, len(windows)


def _dat_per_window_u8(windows, window_us, bins, sensor_size) -> tuple[int, int]:
    """The baseline with uint8 output: per window `read_dat` + the uint8 counting kernel (same dtype as the
    uint8 shard paths, so the comparison is like for like)."""
    from fastvid.events.io import read_dat
    from fastvid.events.representations import represent_batch

    events = 0
    for dat, t0 in windows:
        ev = read_dat(dat, t0, t0 + window_us)
        represent_batch(ev, np.array([0, len(ev)]), "stacked_histogram", sensor_size, bins=bins, t0=t0, t1=t0 + window_us,
                        out_dtype="uint8")
        events += len(ev)
    return events, len(windows)


def _shard_windows_u8(shards, window_us, bins, batch, workers: int = 2) -> tuple[int, int]:
    """What a pipeline built on the shard read functions does: `SegmentReader.read_window` per window in
    `workers` threads (only the window's blocks are read and decompressed), one uint8 `represent_batch` per
    `batch` windows."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from fastvid.events.representations import represent_batch
    from fastvid.events.codec import META_EXT
    from fastvid.events.reading import SegmentReader, index_segments

    events = windows = 0
    with SegmentReader() as reader, ThreadPoolExecutor(workers) as pool:
        todo = []
        for ref in index_segments(shards):
            meta = json.loads(reader.read_fields(ref, {META_EXT})[META_EXT])
            todo.extend((ref, a) for a in range(meta["t0"], min(meta["t1"], meta["recording_t_end"]), window_us))
        sensor = tuple(meta["sensor_size"])
        for i in range(0, len(todo), batch):
            part = todo[i:i + batch]
            cols = list(pool.map(lambda item: reader.read_window(item[0], item[1], item[1] + window_us), part))
            offsets = np.concatenate([[0], np.cumsum([len(c["t"]) for c in cols])]).astype(np.int64)
            merged = {k: np.concatenate([c[k] for c in cols]) for k in ("t", "x", "y", "p")}
            t0s = np.array([a for _, a in part], np.int64)
            represent_batch(merged, offsets, "stacked_histogram", sensor, bins=bins, t0=t0s, t1=t0s + window_us,
                            out_dtype="uint8")
            events += int(offsets[-1])
            windows += len(part)
    return events, windows


def _tonic(windows, window_us, bins, sensor_size) -> tuple[int, int]:
    import tonic.transforms

    from fastvid.events.io import read_dat

    to_frame = tonic.transforms.ToFrame(sensor_size=(*sensor_size, 2), n_time_bins=bins)
    events = 0
    for dat, t0 in windows:
        ev = read_dat(dat, t0, t0 + window_us)
        # tonic wants fields t, x, y, p with p in {0, 1}: EVENT_DTYPE has them (p as int8).
        if len(ev):
            to_frame(ev)
        events += len(ev)
    return events, len(windows)


def _loader(shards, window_ms, bins, batch, device, dtype, precomputed: bool = False,
            prefetch: int = 2) -> tuple[int, int, dict]:
    """EventSequenceLoader over the set; `precomputed`: let it read the stored histograms (the set must hold
    them for these windows) instead of the events. Events per window come from the shards' metadata then.
    `prefetch` 0: no producer thread, steps made in the consuming thread (as the DAT path runs)."""
    from fastvid.events.sequence import Encoding, EventExecution, EventSequenceLoader, Windowing

    loader = EventSequenceLoader(shards, batch, Windowing(window_ms=window_ms, shuffle=False),
                                 Encoding("stacked_histogram", bins=bins, dtype=dtype, precomputed=precomputed),
                                 EventExecution(device=device, prefetch=prefetch))
    if precomputed and loader.precomputed is None:
        raise ValueError(f"{shards}: holds no precomputed representation for these windows")
    for _ in loader:
        pass
    # Windows read precomputed carry no event count: count the events they stand for.
    events = _set_events(shards) if precomputed else loader.stats["events"]
    return events, loader.stats["windows"], loader.stage_stats.seconds()


def _set_events(shards) -> int:
    import json

    from fastvid.events.codec import META_EXT
    from fastvid.events.reading import SegmentReader, index_segments

    with SegmentReader() as reader:
        return sum(int(json.loads(reader.read_fields(ref, {META_EXT})[META_EXT])["num_events"])
                   for ref in index_segments(shards))


def _precomputed(shards, ext, batch, dtype, workers: int = 2) -> tuple[int, int]:
    """Every grid window's precomputed field, `batch` windows per fresh (B, C, H, W) array, filled by
    `workers` threads (decompression and numpy casts release the GIL)."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from fastvid.events.codec import META_EXT
    from fastvid.events.reading import SegmentReader, index_segments

    events = 0
    with SegmentReader() as reader, ThreadPoolExecutor(workers) as pool:
        todo = []
        for ref in index_segments(shards):
            meta = json.loads(reader.read_fields(ref, {META_EXT})[META_EXT])
            events += int(meta["num_events"])
            index = reader.representation_index(ref, ext)
            # The grid windows the loader plays: those that start before the recording's end.
            playable = -(-(min(meta["t1"], meta["recording_t_end"]) - meta["t0"]) // index.header["window_us"])
            todo.extend((ref, w) for w in range(min(len(index.sizes), playable)))
        shape = reader.representation_index(todo[0][0], ext).shape
        for i in range(0, len(todo), batch):
            part = todo[i:i + batch]
            out = np.zeros((len(part), *shape), dtype)
            list(pool.map(lambda j: reader.read_representation(part[j][0], ext, [part[j][1]], out=out[j:j + 1], out_zeroed=True),
                          range(len(part))))
            torch.from_numpy(out)  # what a training step receives
    return events, len(todo)


def _output_only(num_windows, batch, shape, dtype) -> tuple[int, int]:
    """The floor of any CPU path: fresh zeroed (B, C, H, W) batches, touched once (page faults + zeroing)."""
    for i in range(0, num_windows, batch):
        out = np.zeros((min(batch, num_windows - i), *shape), dtype)
        out.reshape(-1)[::1024] = 1
    return 0, num_windows


def _gpu_decode(shards, window_ms, bins, batch) -> tuple[int, int]:
    from fastvid.events.gpu_decode import represent_segments_gpu

    return represent_segments_gpu(shards, window_ms, bins, batch)


def _segment_fields(shards, limit: int = 64) -> list:
    from fastvid.events.reading import SegmentReader, index_segments

    with SegmentReader() as reader:
        return [reader.read_fields(ref) for ref in index_segments(shards)[:limit]]


def _decode_all(fields) -> int:
    """Whole-segment decode, one thread (bytes already in memory): events decoded."""
    from fastvid.events.codec import decode_sample

    return sum(len(decode_sample(f, columns=True)["events"]["t"]) for f in fields)


def _window_picks(shards, window_us: int, count: int = 200, seed: int = 0) -> list:
    """Random (unaligned) 50 ms windows inside the segments of a set."""
    import json

    from fastvid.events.reading import SegmentReader, index_segments

    refs = index_segments(shards)
    rng = random.Random(seed)
    with SegmentReader() as reader:
        metas = [json.loads(reader.read_fields(r, {"json"})["json"]) for r in refs]
    picks = []
    for _ in range(count):
        i = rng.randrange(len(refs))
        picks.append((refs[i], rng.randrange(metas[i]["t0"], max(metas[i]["t0"] + 1, metas[i]["t1"] - window_us))))
    return picks


def _read_windows(picks, window_us: int) -> int:
    """Random window reads with a fresh SegmentReader (its caches cold, as for a first epoch): events read."""
    from fastvid.events.reading import SegmentReader

    with SegmentReader() as reader:
        return sum(len(reader.read_window(ref, a, a + window_us)["t"]) for ref, a in picks)


def _layout_stats(sets, window_us: int, repeats: int = 5) -> dict:
    """Per layout: whole-segment decode (one thread) and random window reads, interleaved round-robin over
    the layouts so that a busy machine slows them alike; medians of `repeats`."""
    work = {name: (_segment_fields(s["path"]), _window_picks(s["path"], window_us)) for name, s in sets.items()}
    times = {name: {"decode": [], "windows": []} for name in sets}
    counts = {}
    for _ in range(repeats):
        for name, (fields, picks) in work.items():
            start = time.perf_counter()
            n_dec = _decode_all(fields)
            mid = time.perf_counter()
            n_win = _read_windows(picks, window_us)
            times[name]["decode"].append(mid - start)
            times[name]["windows"].append(time.perf_counter() - mid)
            counts[name] = (n_dec, n_win, len(picks))
    out = {}
    for name, (fields, _) in work.items():
        n_dec, n_win, n_picks = counts[name]
        dec, win = statistics.median(times[name]["decode"]), statistics.median(times[name]["windows"])
        size = sum(len(v) for f in fields for k, v in f.items() if k.startswith("events."))
        out[name] = {"decode_one_thread": {"segments": len(fields), "events": n_dec, "events_per_s": n_dec / dec,
                                           "events_field_bytes_per_event": size / max(n_dec, 1)},
                     "random_window_reads": {"windows": n_picks, "events": n_win, "windows_per_s": n_picks / win,
                                             "events_per_s": n_win / win}}
    return out


def _summary(timings: list, events: int, windows: int, extra=None) -> dict:
    med, best = statistics.median(timings), min(timings)
    out = {"events": events, "windows": windows, "seconds": [round(s, 4) for s in timings],
           "events_per_s": events / med, "windows_per_s": windows / med,
           "best_events_per_s": events / best, "best_windows_per_s": windows / best}
    if extra:
        out.update(extra)
    return out


def _make_sets(src: Path, work: Path, layouts, segment_ms, window_ms, bins) -> dict:
    from fastvid.events.writing import EventLayout, shard_events

    sets = {}
    for name in layouts:
        out = work / ("shards-" + "".join(c if c.isalnum() or c == "-" else "_" for c in name))
        if out.exists():
            shutil.rmtree(out)
        precompute = [f"stacked_histogram:window_ms={window_ms:g}:bins={bins}"] if name == "blocks-lz4" else []
        start = time.perf_counter()
        shard_events(src, out, segment_ms=segment_ms, storage=EventLayout(**LAYOUTS[name]), precompute=precompute)
        seconds = time.perf_counter() - start
        tar_bytes = sum(p.stat().st_size for p in out.glob("*.tar"))
        sets[name] = {"path": out, "write_seconds": round(seconds, 3), "tar_bytes": tar_bytes,
                      "precomputed": bool(precompute)}
    return sets


def _paths(sets, windows, window_us, window_ms, bins, sensor, batch, device, dtype, tonic_windows):
    """name -> zero-argument callable returning (events, windows[, stage seconds])."""
    from fastvid import _gpu

    paths = {"dat": lambda: _dat_per_window(windows, window_us, bins, sensor),
             "dat_batched": lambda: _dat_batched(windows, window_us, bins, sensor, batch),
             "dat (uint8 kernel)": lambda: _dat_per_window_u8(windows, window_us, bins, sensor)}
    for name, s in sets.items():
        paths[f"shards:{name}"] = (lambda p=s["path"]: _loader(p, window_ms, bins, batch, device, dtype))
        if name.startswith("blocks-") and not name.endswith(("1ms", "25ms")):
            paths[f"windows->uint8:{name}"] = (lambda p=s["path"]: _shard_windows_u8(p, window_us, bins, batch))
        if s["precomputed"]:
            from fastvid.events.precompute import parse_spec

            ext = parse_spec(f"stacked_histogram:window_ms={window_ms:g}:bins={bins}").ext
            paths["precomputed (float32 batch)"] = lambda p=s["path"]: _precomputed(p, ext, batch, np.float32)
            paths["precomputed (uint8 batch)"] = lambda p=s["path"]: _precomputed(p, ext, batch, np.uint8)
            # The same through EventSequenceLoader, against its events path at the same output dtype.
            paths["loader uint8: precomputed"] = lambda p=s["path"]: _loader(p, window_ms, bins, batch, device, "uint8", True)
            paths["loader uint8: events"] = lambda p=s["path"]: _loader(p, window_ms, bins, batch, device, "uint8")
            # No producer thread: nothing to overlap with here (the consumer does no training step), and on a CPU
            # its hand-offs hold the GIL; the DAT path runs in the consuming thread too.
            paths["loader uint8, no prefetch thread: precomputed"] = (
                lambda p=s["path"]: _loader(p, window_ms, bins, batch, device, "uint8", True, prefetch=0))
            paths["loader uint8, no prefetch thread: events"] = (
                lambda p=s["path"]: _loader(p, window_ms, bins, batch, device, "uint8", prefetch=0))
        if device.startswith("cuda") and _gpu.cupy_available() and name.startswith("blocks-") and "packed" not in name:
            paths[f"gpu:{name}"] = (lambda p=s["path"]: _gpu_decode(p, window_ms, bins, batch))
    shape = (2 * bins, sensor[1], sensor[0])
    paths[f"floor: output {dtype} batches only"] = lambda: _output_only(len(windows), batch, shape, dtype)
    if tonic_windows:
        paths["tonic ToFrame"] = lambda: _tonic(tonic_windows, window_us, bins, sensor)
    return paths


@dataclass
class EventsShardsBench:
    """Options of `run_benchmark` (the CLI flags' defaults)."""

    work_dir: str = "bench_work/events-shards"  # where generated recordings and shard sets go
    recordings: int = 32                        # generated recordings
    duration_s: float = 4.0                     # seconds per generated recording
    rate_meps: float = 1.0                      # events per second of recording, in millions (GEN1: ~0.67)
    segment_ms: float = 500.0
    window_ms: float = 50.0
    bins: int = 10
    batch: int = 16                             # windows per step (loader streams)
    repeats: int = 3
    layouts: list[str] | None = None            # names in LAYOUTS to write and time (None: all)
    device: str = "cpu"
    dtype: str = "float32"                      # loader output dtype
    tonic_windows: int = 64                     # windows timed through tonic's ToFrame (it is slow)
    quick: bool = False                         # small inputs (a smoke run, not for reporting)


def run_benchmark(options: EventsShardsBench) -> dict:
    from fastvid import _gpu
    from fastvid.benchmarks.common import device_info
    from fastvid.benchmarks.events_io import _load_average, _warm_up, make_gen1_like
    from fastvid.events.writing import EventLayout

    o = replace(options, device=_gpu.resolve_device(options.device))
    if o.quick:
        o = replace(o, recordings=2, duration_s=1.0, repeats=1, layouts=o.layouts or QUICK_LAYOUTS)
    layouts = list(o.layouts or LAYOUTS)
    work = Path(o.work_dir)
    result = {"benchmark": "events-shards", "device": o.device, "device_info": device_info(),
              "command": " ".join(["fastvid", "bench", "events-shards", *sys.argv[3:]]) if "bench" in sys.argv else None,
              "load_average_before": _load_average(), "repeats": o.repeats, "batch": o.batch, "bins": o.bins,
              "window_ms": o.window_ms, "segment_ms": o.segment_ms, "dtype": o.dtype, "representation": "stacked_histogram",
              "statistic": "median of the repeats (best also listed); ratios use the medians"}
    src = work / "gen1_like"
    result["data"] = make_gen1_like(src, o.recordings, o.duration_s, o.rate_meps)
    sensor = (304, 240)
    window_us = int(round(o.window_ms * 1000))
    windows = _windows(src, window_us)
    sets = _make_sets(src, work, layouts, o.segment_ms, o.window_ms, o.bins)
    # options as the manifest spells them (layout, codec, compress_level, block_ms, time_column, xy_column)
    result["layouts"] = {name: {"options": EventLayout(**LAYOUTS[name]).check().options(), "write_seconds": s["write_seconds"],
                                "bytes_per_event": s["tar_bytes"] / result["data"]["events"]} for name, s in sets.items()}
    for name, stats in _layout_stats(sets, window_us).items():
        result["layouts"][name].update(stats)
    has_tonic = _gpu.has_module("tonic")
    paths = _paths(sets, windows, window_us, o.window_ms, o.bins, sensor, o.batch, o.device, o.dtype,
                   windows[:o.tonic_windows] if has_tonic else None)
    _warm_up("stacked_histogram", o.bins, sensor, o.device)
    result["paths"] = _time_paths(paths, o.repeats)
    result["tonic"] = "measured" if has_tonic else "skipped (tonic not installed)"
    result["load_average_after"] = _load_average()
    result["target"] = _targets(result["paths"])
    if not o.quick:
        shutil.rmtree(work, ignore_errors=True) if os.environ.get("FASTVID_BENCH_CLEAN") else None
    return result


def _time_paths(paths: dict, repeats: int) -> dict:
    """One untimed pass of every path, then `repeats` timed passes interleaved round-robin; a row per path."""
    counts, stages = {}, {}
    for name, fn in paths.items():  # steady state: caches, page cache and compiled kernels warm
        counts[name] = fn()[:2]
    timings = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            got = fn()
            timings[name].append(time.perf_counter() - start)
            if len(got) > 2:
                stages[name] = {k: round(v, 4) for k, v in got[2].items()}
    rows = {name: _summary(timings[name], *counts[name], {"stage_seconds": stages[name]} if name in stages else None)
            for name in paths}
    for row in rows.values():
        row["x_dat"] = row["windows_per_s"] / rows["dat"]["windows_per_s"]  # same windows: = the events/s ratio
    return rows


def _targets(rows: dict) -> dict:
    """The issue's targets: the best shard path and the loader against dat, the uint8 paths against dat's uint8 kernel."""
    shard_rows = {n: r["x_dat"] for n, r in rows.items() if n.startswith(("shards:", "precomputed", "windows->"))}
    best = max(shard_rows, key=shard_rows.get)
    target = {"issue 19: best shard path >= 2x dat": {"path": best, "x_dat": shard_rows[best]},
              "loader (EventSequenceLoader, float32) best x dat": max(
                  r["x_dat"] for n, r in rows.items() if n.startswith("shards:"))}
    if "dat (uint8 kernel)" in rows:
        u8 = rows["dat (uint8 kernel)"]["windows_per_s"]
        target["uint8 paths x dat (uint8 kernel)"] = {
            n: r["windows_per_s"] / u8 for n, r in rows.items() if n.startswith(("windows->", "precomputed (uint8"))}
    return target


def format_table(result: dict) -> str:
    lines = [f"events-shards on {result['device_info']['device']} ({result['representation']}, bins {result['bins']}, "
             f"{result['window_ms']:g} ms windows, batch {result['batch']}, {result['dtype']}; load "
             f"{result['load_average_before']} -> {result['load_average_after']}):",
             f"  {'path':34s} {'M events/s':>10s} {'windows/s':>10s} {'x dat':>7s}"]
    for name, r in result["paths"].items():
        lines.append(f"  {name:34s} {r['events_per_s'] / 1e6:10.1f} {r['windows_per_s']:10.0f} {r['x_dat']:7.2f}")
    lines.append("  (x dat: windows/s over the dat path's; tonic runs on the first --tonic-windows windows only)")
    lines.append(f"  {'layout':34s} {'B/event':>8s} {'(events)':>8s} {'decode 1 thr':>12s} {'window reads/s':>14s}")
    for name, r in result["layouts"].items():
        d = r["decode_one_thread"]
        lines.append(f"  {name:34s} {r['bytes_per_event']:8.2f} {d['events_field_bytes_per_event']:8.2f} "
                     f"{d['events_per_s'] / 1e6:8.1f} M/s {r['random_window_reads']['windows_per_s']:14.0f}")
    lines.append("  (B/event: the tars, with precomputed histograms where written; (events): the events field alone)")
    return "\n".join(lines)


def add_arguments(p):
    p.add_argument("--work-dir", default="bench_work/events-shards", help="where generated recordings and shard sets go")
    p.add_argument("--recordings", type=int, default=32,
                   help="generated recordings (32 x 4 s: every path runs over a second per pass, past its start-up)")
    p.add_argument("--duration-s", type=float, default=4.0, help="seconds per generated recording")
    p.add_argument("--rate-meps", type=float, default=1.0, help="events per second of recording, in millions (GEN1: ~0.67)")
    p.add_argument("--segment-ms", type=float, default=500.0)
    p.add_argument("--window-ms", type=float, default=50.0)
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="windows per step (loader streams)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layouts", nargs="+", default=None, choices=list(LAYOUTS), help="shard layouts to write and time (default: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--dtype", default="float32", choices=["float32", "uint8"], help="loader output dtype")
    p.add_argument("--tonic-windows", type=int, default=64, help="windows timed through tonic's ToFrame (it is slow)")
    p.add_argument("--quick", action="store_true", help="small inputs (a smoke run, not for reporting)")
    p.add_argument("--json", default=None, help="result path (default bench/results/events-shards-<device>.json; '-' prints)")


def run(args) -> int:
    from dataclasses import fields

    from fastvid.benchmarks.common import write_json

    result = run_benchmark(EventsShardsBench(**{f.name: getattr(args, f.name) for f in fields(EventsShardsBench)}))
    path = args.json or f"bench/results/events-shards-{'cuda' if result['device'].startswith('cuda') else 'cpu'}.json"
    write_json(result, path)
    print(format_table(result) + f"\n  -> {path}")
    return 0
