"""`fastvid profile [--interval S] [--out DIR] -- CMD ...`: run a command and record a resource timeline.

Samples the command's process tree (CPU%, RSS via psutil) and every visible GPU (utilization,
memory used, SM clock via NVML) with fastvid.metrics.ResourceSampler, then writes
DIR/profile.csv (one row per sample), DIR/profile.png (the timeline) and DIR/summary.json.
Without a GPU/NVML the GPU columns are left empty and the summary says so.
Exit status is the command's.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from fastvid.store.atomic import atomic_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default: 0.5)")
    p.add_argument("--out", default="profile", help="output directory for profile.csv/.png and summary.json (default: ./profile)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run, after --")


def columns(num_gpus: int) -> list[str]:
    cols = ["t_s", "cpu_percent", "rss_mib"]
    for i in range(num_gpus):
        cols += [f"gpu{i}_util", f"gpu{i}_mem_mib", f"gpu{i}_sm_clock_mhz"]
    return cols


def sample_rows(samples, t0: float, num_gpus: int) -> list[list]:
    """Samples -> CSV rows; GPU cells are empty when a sample has no reading for that GPU."""
    rows = []
    for s in samples:
        row = [round(s.t - t0, 3), round(s.cpu_percent, 1), round(s.rss_bytes / 2**20, 1)]
        for i in range(num_gpus):
            have = i < len(s.gpu_util)
            row += [s.gpu_util[i] if have else "", round(s.gpu_mem_bytes[i] / 2**20, 1) if have else "",
                    s.sm_clock_mhz[i] if i < len(s.sm_clock_mhz) else ""]
        rows.append(row)
    return rows


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def plot_timeline(path: Path, header: list[str], rows: list[list], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r[0] for r in rows]
    col = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    gpus = sorted({name.split("_")[0] for name in header if name.startswith("gpu")})
    panels = [("CPU %", ["cpu_percent"]), ("RSS MiB", ["rss_mib"])]
    if gpus:
        panels += [("GPU util %", [f"{g}_util" for g in gpus]), ("GPU mem MiB", [f"{g}_mem_mib" for g in gpus]),
                   ("SM clock MHz", [f"{g}_sm_clock_mhz" for g in gpus])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, names) in zip(axes[:, 0], panels):
        for name in names:
            ys = [float(v) if v != "" else float("nan") for v in col[name]]
            ax.plot(t, ys, label=name, linewidth=1.2)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds")
    axes[0, 0].set_title(title if gpus else f"{title}  (no GPU visible: GPU columns empty)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def profile_command(cmd: list[str], out_dir: str | Path, interval: float = 0.5) -> dict:
    """Run `cmd`, sample it until it exits, write CSV/PNG/summary; returns the summary (with "returncode")."""
    from fastvid.metrics import ResourceSampler

    if not cmd:
        raise ValueError("no command given: use fastvid profile [--interval S] [--out DIR] -- CMD ...")
    if interval <= 0:
        raise ValueError(f"--interval must be > 0, got {interval}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        proc = subprocess.Popen(cmd)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"cannot run {cmd[0]!r}: {exc.strerror}") from exc
    sampler = ResourceSampler(interval=interval, pid=proc.pid, keep_samples=True).start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        rc = proc.wait()
    summary = sampler.stop()
    num_gpus = max((len(s.gpu_util) for s in sampler.samples), default=0)
    # Without a GPU the gpu0 columns are still written (empty) so the CSV has one schema everywhere.
    header = columns(max(num_gpus, 1))
    rows = sample_rows(sampler.samples, t0, max(num_gpus, 1))
    write_csv(out / "profile.csv", header, rows)
    plot_header = header if num_gpus else header[:3]
    plot_timeline(out / "profile.png", plot_header, [r[: len(plot_header)] for r in rows], " ".join(cmd)[:120])
    summary.update(
        command=cmd, returncode=rc, wall_s=round(time.time() - t0, 3), interval_s=interval, num_gpus=num_gpus,
        gpu_note=None if num_gpus else "no GPU visible to NVML: GPU columns are empty",
        sm_clock_mean_mhz=round(sum(s.sm_clock_mhz[0] for s in sampler.samples if s.sm_clock_mhz) /
                                max(1, sum(1 for s in sampler.samples if s.sm_clock_mhz)), 1) if num_gpus else None,
        csv=str(out / "profile.csv"), png=str(out / "profile.png"),
    )
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(args) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    s = profile_command(cmd, args.out, args.interval)
    gpu = (f"GPU util mean {s['gpu_util_mean']}%, GPU mem max {(s['gpu_mem_max_bytes'] or 0) / 2**20:.0f} MiB"
           if s["num_gpus"] else "GPU: none visible (NVML), GPU columns empty")
    print(f"fastvid profile: {s['num_samples']} samples over {s['wall_s']:.1f} s; CPU mean {s['cpu_percent']}%, "
          f"RSS max {(s['rss_max_bytes'] or 0) / 2**20:.0f} MiB; {gpu}; wrote {s['csv']}, {s['png']}", file=sys.stderr)
    return int(s["returncode"])
