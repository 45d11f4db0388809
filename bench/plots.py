"""Plots for the documentation's benchmarks page, drawn from the committed JSON in bench/results/.

Two ways in, one drawing code:
- a MkDocs hook (mkdocs.yml `hooks:`): `on_files` adds the PNGs to the site as generated files
  (img/bench/*.png), so the plots are redrawn from the JSON at every docs build and cannot drift
  from the numbers;
- a script: `python bench/plots.py OUT_DIR` writes the same PNGs to look at them.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from fastvid.doctor import sig  # the one significant-digits formatter: no figure shows as a rounded zero

RESULTS = Path(__file__).resolve().parent / "results"
SITE_DIR = "img/bench"  # where the docs pages find the plots


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _when(result: dict) -> str:
    info = result.get("device_info") or result.get("device") or {}
    return f"{info.get('device', 'CPU')}, {info.get('date', '')[:10]}"


def _loader(ax) -> None:
    """clips/s of each loader backend against the torchvision-style baseline of the same run."""
    runs = [("loader-cpu.json", "60 videos, 320x240\nAMD EPYC, 11-21"),
            ("loader-cpu-short128.json", "60 videos, short\nside 128, EPYC, 11-21"),
            ("loader-cpu-short128-480.json", "480 videos, short side\n128, EPYC, 11-30 (load 4-8)"),
            ("loader-cpu-short128-480-xeon.json", "480 videos, short side\n128, Intel Xeon, 12-07")]
    backends = ("pyav", "dali", "baseline")
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        rates = [_load(f)["backends"][backend]["clips_per_s"] for f, _ in runs]
        bars = ax.bar([g + i * width for g in range(len(runs))], rates, width, label=backend)
        for bar, (f, _) in zip(bars, runs):
            result = _load(f)
            ratio = result["backends"][backend]["clips_per_s"] / result["backends"]["baseline"]["clips_per_s"]
            ax.annotate(f"{sig(ratio)}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7)
    ax.set_xticks([g + width for g in range(len(runs))], [label for _, label in runs], fontsize=8)
    ax.set_ylabel("clips/s (16x112x112, batch 16)")
    ax.legend(fontsize=8, title="backend", title_fontsize=8)
    ax.set_title("Video loader on 2-core CPUs (2026): ratio to the baseline of the same run above each bar",
                 fontsize=9)


def _event_kernels(ax) -> None:
    """Numba event representations against numpy's np.add.at, one window and a batch of 16."""
    speedups = _load("all-cpu-2core.json")["speedups"]
    prefix = "events: speedup_vs_numpy_add_at/"
    kinds = ["histogram", "stacked_histogram", "voxel_grid", "time_surface", "event_frame"]
    for i, mode in enumerate(("single", "batched")):
        values = [speedups[f"{prefix}{kind}_cpu_{mode}_vs_np_add_at"] for kind in kinds]
        ax.bar([k + i * 0.4 for k in range(len(kinds))], values, 0.4, label=f"{mode} window" + ("s" if i else ""))
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([k + 0.2 for k in range(len(kinds))], kinds, fontsize=8)
    ax.set_ylabel("speed-up over np.add.at")
    ax.legend(fontsize=8)
    ax.set_title(f"Event representations, Numba on the CPU (33k events per window)\n({_when(_load('all-cpu-2core.json'))})",
                 fontsize=9)


def _event_readers(ax) -> None:
    """Reading a 4 M-event recording: fastvid's readers against a plain numpy reader and expelliarmus."""
    result = _load("events-read-cpu.json")
    names = list(result["readers"])
    rates = [result["readers"][n]["events_per_s"] / 1e6 for n in names]
    ax.barh(range(len(names)), rates, color=["tab:blue" if n.startswith("fastvid") else "tab:gray" for n in names])
    for i, v in enumerate(rates):
        ax.text(v, i, f" {sig(v)}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("million events/s")
    ax.set_title(f"Reading a whole 4 M-event recording\n({_when(result)})", fontsize=9)


def _event_loader_stages(ax) -> None:
    """Where the event loader's CPU time goes (each stage timed inside the loader, synchronized)."""
    result = _load("events-io-cpu.json")
    stages = result["loader_stages_synced"]["stage_seconds"]
    names = list(stages)
    ax.barh(range(len(names)), [stages[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(stages[n], i, f" {sig(stages[n])} s", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("CPU-seconds for the run")
    load = result.get("load_average_before")
    ax.set_title(f"Event shards -> stacked histograms: seconds per stage\n({_when(result)}, load average "
                 f"{sig(load[0], 2)} before)" if load else f"({_when(result)})", fontsize=9)


def _shard_engines(ax) -> None:
    """Sharding throughput per core: local engine, Ray tasks and Ray Data, by codec."""
    result = _load("shard-ray-cpu.json")
    codecs = ("copy", "h264", "vp9")
    series = [(engine, workers) for engine in ("local", "ray", "ray-data") for workers in (1, 2)]
    width = 0.8 / len(series)
    for i, (engine, workers) in enumerate(series):
        values = [next(r["clips_per_s_per_core"] for r in result["runs"]
                       if r["engine"] == engine and r["workers"] == workers and r["codec"] == codec) for codec in codecs]
        ax.bar([c + i * width for c in range(len(codecs))], values, width, label=f"{engine}, {workers} worker(s)")
    ax.set_yscale("log")
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(codecs))], codecs, fontsize=8)
    ax.set_ylabel("clips/s per core (log scale)")
    ax.legend(fontsize=7, ncol=3)
    load = result["load_average_at_end"]
    ax.set_title(f"Sharding 32-frame 320x240 clips, by engine\n({_when(result)}, shared machine: load average "
                 f"{sig(load[0], 2)} at the end)", fontsize=9)


def _event_shards(ax) -> None:
    """Event windows -> stacked histograms, every path of one run, as a ratio to the DAT-file path."""
    result = _load("events-shards-cpu.json")
    paths = result["paths"]
    names = sorted(paths, key=lambda n: paths[n]["windows_per_s"])
    rates = [paths[n]["windows_per_s"] for n in names]
    colors = ["tab:gray" if n.startswith(("dat", "tonic", "floor")) else "tab:blue" for n in names]
    ax.barh(range(len(names)), rates, color=colors)
    for i, n in enumerate(names):
        ax.text(rates[i], i, f" {sig(rates[i])} ({sig(paths[n]['x_dat'])}x)", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("windows/s (50 ms, 10 bins, batches of 16); ratio to the `dat` path in brackets")
    load = result.get("load_average_before")
    ax.set_title(f"Event windows -> stacked histograms, every path in one run (grey: baselines)\n({_when(result)}"
                 + (f", load average {sig(load[0], 2)} before)" if load else ")"), fontsize=9)


def _remote(ax) -> None:
    """Training from a remote set as it grows: seconds to the first batch and tar bytes fetched before it."""
    result = _load("remote-cpu.json")
    sizes = result["sizes"]
    shards = [s["shards"] for s in sizes]
    for r in range(len(sizes[0]["ranks"])):
        ax.plot(shards, [s["ranks"][r]["first_batch_s"] for s in sizes], marker="o", label=f"rank {r}: first batch, s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(shards, [f"{n} shards\n{sig(s['set_bytes'] / 2**20)} MiB" for n, s in zip(shards, sizes)], fontsize=8)
    ax.set_ylabel("seconds to the first batch")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(shards, [s["ranks"][0]["tar_bytes_before_first_batch"] / 2**20 for s in sizes], color="tab:gray",
              linestyle="--", marker="s", label="tar MiB fetched before it")
    twin.set_ylabel("tar MiB before the first batch")
    twin.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    load = result.get("load_average")
    ax.set_title(f"Remote set over HTTP, 2 ranks, each cache 1/8 of the set (at least the window)\n({_when(result)}"
                 + (f", load average {sig(load[0], 2)})" if load else ")"), fontsize=9)


PLOTS = {"loader": _loader, "event-kernels": _event_kernels, "event-readers": _event_readers,
         "event-loader-stages": _event_loader_stages, "shard-engines": _shard_engines, "event-shards": _event_shards,
         "remote": _remote}


def render(name: str) -> bytes:
    """One plot as PNG bytes (no timestamp in the file, so the same JSON gives the same bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    PLOTS[name](ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def on_files(files, config):
    """MkDocs hook: add every plot to the site as img/bench/NAME.png."""
    from mkdocs.structure.files import File

    for name in PLOTS:
        files.append(File.generated(config, f"{SITE_DIR}/{name}.png", content=render(name)))
    return files


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/plots.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:
        tmp = out / f"{name}.png.tmp"
        tmp.write_bytes(render(name))
        tmp.replace(out / f"{name}.png")
        print(out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
