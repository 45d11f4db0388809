"""`fastvid bench events-read`: events/s of reading a whole Prophesee DAT file on the CPU.

Compares, on one generated GEN1-like file read from the page cache (best of `repeats`):
* fastvid: `fastvid.events.read_dat` (EVENT_DTYPE, timestamps checked to go forward);
* plain numpy: the usual reader of the format (skip the '%' header and the two type/size bytes,
  `np.fromfile` the 8-byte events, unpack x/y/p with bit operations), written here as the baseline;
* expelliarmus (when installed): `Wizard(encoding="dat").read`, alone and converted to EVENT_DTYPE.
The same events written as an EVT 2.0 RAW file are read with `fastvid.events.raw.read_raw` and with
expelliarmus (`encoding="evt2"`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def plain_numpy_read(path) -> np.ndarray:
    with open(path, "rb") as f:
        while True:
            pos = f.tell()
            if f.read(1) != b"%":
                f.seek(pos)
                break
            f.readline()
        f.read(2)  # event type, event size
        raw = np.fromfile(f, dtype=[("t", "<u4"), ("w", "<u4")])
    out = np.empty(len(raw), [("t", "<u4"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    out["t"] = raw["t"]
    w = raw["w"]
    out["x"] = w & 0x3FFF
    out["y"] = (w >> 14) & 0x3FFF
    out["p"] = (w >> 28) & 1
    return out


def write_evt2(path, events) -> None:
    """EVT 2.0 words for sorted events: a TIME_HIGH word before each change of t >> 6, then CD words."""
    t = events["t"].astype(np.int64)
    high = t >> 6
    change = np.ones(len(t), bool)
    change[1:] = high[1:] != high[:-1]
    pos = np.arange(len(t)) + np.cumsum(change)  # each CD word's index, after the TIME_HIGH words so far
    words = np.zeros(len(t) + int(change.sum()), "<u4")
    words[pos[change] - 1] = (np.uint32(8) << 28) | (high[change] & 0x0FFFFFFF).astype(np.uint32)
    words[pos] = ((events["p"].astype(np.uint32) & 1) << 28) | ((t & 0x3F).astype(np.uint32) << 22) \
        | (events["x"].astype(np.uint32) << 11) | events["y"].astype(np.uint32)
    with open(path, "wb") as f:
        f.write(b"% evt 2.0\n% format EVT2;height=240;width=304\n% end\n")
        f.write(words.tobytes())


def _best(fn, repeats: int) -> float:
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best


def run_benchmark(device: str = "cpu", work_dir: str = "bench_work/events-read", quick: bool = False,
                  events: int | None = None, repeats: int | None = None) -> dict:
    from fastvid.benchmarks.common import device_info
    from fastvid.events.io import read_dat, write_dat
    from fastvid.events.types import EVENT_DTYPE

    n = events or (200_000 if quick else 4_000_000)
    repeats = repeats or (2 if quick else 5)
    rng = np.random.default_rng(0)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, int(n / 0.67), n))  # GEN1's average rate: 0.67 events/us
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 304, n), rng.integers(0, 240, n), rng.integers(0, 2, n)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    path = write_dat(work / "bench_td.dat", ev)
    if not np.array_equal(read_dat(path), ev):  # also compiles the kernels outside the timing
        raise RuntimeError("read_dat does not read back the benchmark file")
    from fastvid.events.raw import read_raw

    raw_path = work / "bench.raw"
    write_evt2(raw_path, ev)
    if not np.array_equal(read_raw(raw_path), ev):
        raise RuntimeError("read_raw does not read back the benchmark file")
    result = {"device": "cpu", "device_info": device_info(), "events": n, "repeats": repeats, "readers": {}}
    readers = {"fastvid read_dat": lambda: read_dat(path), "plain numpy": lambda: plain_numpy_read(path),
               "fastvid read_raw (EVT 2.0)": lambda: read_raw(raw_path)}
    try:
        from expelliarmus import Wizard

        def expelliarmus_converted():
            r = Wizard(encoding="dat").read(str(path))
            out = np.empty(len(r), EVENT_DTYPE)
            for name in "txyp":
                out[name] = r[name]
            return out

        readers["expelliarmus"] = lambda: Wizard(encoding="dat").read(str(path))
        readers["expelliarmus -> EVENT_DTYPE"] = expelliarmus_converted
        readers["expelliarmus (EVT 2.0)"] = lambda: Wizard(encoding="evt2").read(str(raw_path))
    except ImportError:
        result["expelliarmus"] = "not installed (pip install expelliarmus)"
    for name, fn in readers.items():
        seconds = _best(fn, repeats)
        result["readers"][name] = {"seconds": round(seconds, 5), "events_per_s": n / seconds}
    base = result["readers"]["plain numpy"]["events_per_s"]
    result["speedup_read_dat_vs_plain_numpy"] = result["readers"]["fastvid read_dat"]["events_per_s"] / base
    return result


def add_arguments(p):
    p.add_argument("--work-dir", default="bench_work/events-read")
    p.add_argument("--events", type=int, default=None, help="events in the generated file (default 4 M; --quick 200 k)")
    p.add_argument("--repeats", type=int, default=None, help="timed reads per reader, best kept (default 5)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None, help="result path (default bench/results/events-read-cpu.json; '-' prints)")


def run(args) -> int:
    from fastvid.benchmarks.common import write_json

    result = run_benchmark(work_dir=args.work_dir, quick=args.quick, events=args.events, repeats=args.repeats)
    path = args.json or "bench/results/events-read-cpu.json"
    write_json(result, path)
    lines = [f"events-read on {result['device_info']['device']} ({result['events']:,} events, best of {result['repeats']}):"]
    for name, r in result["readers"].items():
        lines.append(f"  {name:28s} {r['events_per_s'] / 1e6:8.1f} M events/s")
    lines.append(f"  read_dat vs plain numpy: {result['speedup_read_dat_vs_plain_numpy']:.2f}x  -> {path}")
    print("\n".join(lines))
    return 0
