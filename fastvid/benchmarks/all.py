"""`fastvid bench all`: every benchmark that fits the device, one JSON and one PNG chart.

Each benchmark module exposes an options dataclass and `run_benchmark(options) -> dict`; this module
only prepares the shared small dataset, calls them in turn (a failing one is recorded, not fatal) and
draws the speed-ups each reports against its own in-run baseline.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from fastvid import _gpu
from fastvid.benchmarks.common import device_info, write_json
from fastvid.store.atomic import atomic_path

KINDS = ("loader", "events", "crop", "train", "events-io")
# kind -> its module's options dataclass (every one has device, work_dir and quick)
OPTIONS = {"loader": "LoaderBench", "events": "EventsBench", "crop": "CropBench", "train": "TrainBench",
           "events-io": "EventsIOBench"}


def add_arguments(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--only", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--work-dir", default="bench_work", help="where generated clips and shards are kept between runs")
    p.add_argument("--json", default="bench_all.json", help="result JSON path ('-' prints it)")
    p.add_argument("--png", default=None, help="chart path (default: next to the JSON)")
    p.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run, not for reporting)")


def _is_ratio_key(key: str) -> bool:
    words = key.lower().replace("-", "_").split("_")
    return "speedup" in words or "vs" in words or "ratio" in words or key.lower().startswith("x_")


def _speedups(name: str, result: dict) -> dict:
    """{label: ratio} from a benchmark result: every key named like '*speedup*' or '*_vs_*', at any depth."""
    found = {}

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and any(_is_ratio_key(part) for part in prefix.split("/")):
            found[f"{name}: {prefix}"] = float(obj)

    walk("", result)
    return found


def write_chart(speedups: dict, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(speedups)
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(labels), 2) + 1.2))
    values = [speedups[k] for k in labels]
    ax.barh(range(len(labels)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up vs in-run baseline (x, log scale)")
    ax.set_title(f"fastvid bench all on {device}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def run(args) -> int:
    from fastvid.benchmarks.cli import BENCHMARKS

    device = _gpu.resolve_device(args.device)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(only) - set(KINDS)
    if unknown:
        raise ValueError(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results = {"device_info": device_info(), "device": device, "quick": args.quick, "benchmarks": {}}
    for kind in only:
        print(f"== bench {kind} on {device}")
        t0 = time.time()
        try:
            mod = BENCHMARKS[kind][0]()
            options = getattr(mod, OPTIONS[kind])(device=device, work_dir=str(work / kind), quick=args.quick)
            res = mod.run_benchmark(options)
            results["benchmarks"][kind] = {"ok": True, "seconds": round(time.time() - t0, 1), "result": res}
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            results["benchmarks"][kind] = {"ok": False, "seconds": round(time.time() - t0, 1), "error": f"{type(exc).__name__}: {exc}"}
    speedups = {}
    for kind, entry in results["benchmarks"].items():
        if entry["ok"]:
            speedups.update(_speedups(kind, entry["result"]))
    results["speedups"] = speedups
    write_json(results, args.json)
    png = Path(args.png) if args.png else (Path(args.json).with_suffix(".png") if args.json != "-" else work / "bench_all.png")
    write_chart(speedups, png, results["device_info"]["device"])
    ok = sum(e["ok"] for e in results["benchmarks"].values())
    print(f"bench all: {ok}/{len(only)} benchmarks ran on {device}; results {args.json}, chart {png}")
    return 0 if ok == len(only) else 1
