"""`fastvid quickstart`: the whole job end to end on a small dataset that fastvid makes itself.

Generates a learnable motion-recognition dataset (shapes moving in class-specific ways over
varied backgrounds), encodes it as real video files, shards it with `fastvid shard videos`,
trains a small video model with `fastvid train`, evaluates it, and writes DIR/summary.json and
DIR/report.png. The loader backend is `auto`: on a GPU, H.264 shards for NVDEC; on CPU, VP9 shards read by
DALI's CPU decoder (measured faster there than PyAV's decode workers, which take over without DALI).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from fastvid import _gpu
from fastvid.store.atomic import atomic_path, write_text_atomic


def add_arguments(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to decode and train (default: cuda if visible)")
    p.add_argument("--out", default="fastvid_quickstart", help="output folder (dataset, shards, checkpoints, summary)")
    p.add_argument("--videos-per-class", type=int, default=30, help="training videos per class (val gets a third of that)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 30)")
    p.add_argument("--model", default=None, help="model name from fastvid.train.models.list_models() (default: R3D-18 at a quarter of its width)")
    p.add_argument("--backend", default="auto", choices=["auto", "dali", "pyav"])
    p.add_argument("--seed", type=int, default=0)


def _generate(out: Path, videos_per_class: int, seed: int, codec: str) -> None:
    """Write the motion dataset under out/videos once; other parameters start the whole run afresh
    (stale videos, shards or a checkpoint trained on other data are never reused)."""
    import shutil

    from fastvid.video.synth import make_motion_dataset

    root = out / "videos"
    marker = root / ".complete"
    params = json.dumps({"videos_per_class": videos_per_class, "seed": seed, "codec": codec}, sort_keys=True)
    if marker.exists() and marker.read_text() == params:
        return
    for stale in (root, out / "shards", out / "train"):
        shutil.rmtree(stale, ignore_errors=True)
    make_motion_dataset(root / "train", videos_per_class=videos_per_class, num_frames=32, height=72, width=96,
                        codec=codec, seed=seed)
    make_motion_dataset(root / "val", videos_per_class=max(videos_per_class // 3, 2), num_frames=32, height=72,
                        width=96, codec=codec, seed=seed + 1)
    marker.write_text(params)


def _command(module, name: str, argv: list[str]) -> int:
    """Run a command module (add_arguments / run) as `fastvid NAME ARGV` would; errors propagate."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"fastvid {name}")
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)


def _shard(out: Path, codec: str, seed: int) -> None:
    """`fastvid shard videos` on the train and val videos, into out/shards/{train,val}."""
    from fastvid.video import cli as shard_videos

    for split in ("train", "val"):
        _command(shard_videos, "shard videos", [str(out / "videos" / split), str(out / "shards" / split), "--layout", "kinetics",
              "--codec", codec, "--split", split, "--max-samples", "64", "--seed", str(seed)])


def _train_argv(args, out: Path, device: str, epochs: int) -> list[str]:
    """The `fastvid train` command line of the quickstart (without --resume)."""
    train_argv = [
        "--data-path", str(out / "shards"), "--train-dir", "train", "--val-dir", "val",
        "--model", args.model or "r3d_18", "--device", device, "--backend", args.backend, "--output-dir", str(out / "train"),
        "--epochs", str(epochs), "--clip-len", "8", "--frame-stride", "2", "--clips-per-video", "2", "--batch-size", "16",
        "--lr", "0.01", "--lr-warmup-epochs", "1", "--lr-milestones", str(max(int(epochs * 0.75), 2)),
        "--train-resize-size", "64", "80", "--train-crop-size", "56", "56", "--val-resize-size", "64", "80",
        "--val-crop-size", "56", "56", "--seed", str(args.seed), "--print-freq", "1000",
        # Evaluating 3 times instead of every epoch keeps the run within 5 minutes on 2 CPU cores;
        # each epoch still prints one line with the ETA of the rest.
        "--eval-every", str(max(epochs // 3, 1)),
        # Decode threads/workers no more than the cores (at most 4): extra threads only contend with training.
        "-j", str(max(1, min(os.cpu_count() or 1, 4))),
    ]
    if args.model is None:
        train_argv += ["--model-width", "16"]  # a quarter-width R3D-18: the real architecture, CPU-sized
    return train_argv


def _prepare_resume(train_dir: Path, model: str) -> list[str]:
    """Resume a finished or interrupted run of the same model (returns the --resume arguments, if any);
    another model starts training afresh."""
    model_marker = train_dir / ".quickstart-model"
    if model_marker.exists() and model_marker.read_text() != model:
        import shutil

        shutil.rmtree(train_dir)
    resume = ["--resume", str(train_dir / "checkpoint.pth")] if (train_dir / "checkpoint.pth").exists() else []
    train_dir.mkdir(parents=True, exist_ok=True)
    model_marker.write_text(model)
    return resume


def _train(train_argv: list[str], train_dir: Path) -> int:
    """Run `fastvid train`; returns 0, or PREEMPTED_EXIT_CODE when training was preempted (and checkpointed)."""
    from fastvid.train.preempt import PREEMPTED_EXIT_CODE
    from fastvid.video import train_cli

    # On CPU the trainer leaves a core to the decoders (fastvid.train.trainer.choose_cpu_threads).
    rc = _command(train_cli, "train", train_argv)
    if rc == PREEMPTED_EXIT_CODE:
        # Not finished: no summary (it would describe a partial run). The rerun resumes the checkpoint.
        print(f"quickstart: training was preempted (SIGTERM) and checkpointed in {train_dir}; rerun the same "
              f"`fastvid quickstart` command to resume. No summary written.", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if rc != 0:
        raise RuntimeError(f"`fastvid train {' '.join(train_argv)}` failed with exit status {rc}")
    return 0


def _summarize(out: Path, train_dir: Path, backend: str, device: str, t_start: float) -> tuple[dict, list[dict]]:
    """The summary of the finished run (summary.json's content) and the per-epoch metrics rows."""
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise RuntimeError(f"{train_dir / 'metrics.jsonl'} has no rows: training wrote no metrics")
    manifest = json.loads((out / "shards" / "train" / "manifest.json").read_text())
    last = rows[-1]
    summary = {
        "num_classes": len(manifest["classes"]),
        "chance_acc1": round(100.0 / len(manifest["classes"]), 2),
        "val_acc1": round(last["val_acc1"], 2) if last.get("val_acc1") is not None else None,
        "val_acc5": round(last["val_acc5"], 2) if last.get("val_acc5") is not None else None,
        "train_clips_per_s": last.get("clips_per_s"),
        "data_wait_frac": last.get("data_wait_frac"),
        "backend": last.get("backend", backend),
        "device": device,
        "epochs": len(rows),
        "seconds": round(time.time() - t_start, 1),
    }
    return summary, rows


def _write_outputs(out: Path, summary: dict, rows: list[dict]) -> None:
    """DIR/summary.json and DIR/report.png, and the summary on stdout."""
    write_text_atomic(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    write_report(rows, out / "report.png", chance=summary["chance_acc1"])
    print(json.dumps(summary, indent=2))
    print(f"quickstart: {summary['num_classes']} classes, val top-1 {summary['val_acc1']:.1f}% (chance {summary['chance_acc1']}%), "
          f"{summary['train_clips_per_s']} train clips/s on {summary['device']}, {summary['seconds']} s; report: {out / 'report.png'}")


def run(args) -> int:
    t_start = time.time()
    device = _gpu.resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or 30
    # CPU: DALI's CPU decoder reads VP9 only, so shards are VP9; GPU: H.264 for NVDEC.
    shard_codec = "h264" if device.startswith("cuda") else "vp9"

    print(f"[1/4] generating motion dataset under {out / 'videos'}")
    _generate(out, args.videos_per_class, args.seed, codec="libx264")

    print(f"[2/4] sharding with `fastvid shard videos` (codec {shard_codec})")
    _shard(out, shard_codec, args.seed)

    print(f"[3/4] training for {epochs} epochs on {device} (each epoch prints a line with the ETA of the rest)")
    train_dir = out / "train"
    train_argv = _train_argv(args, out, device, epochs)
    train_argv += _prepare_resume(train_dir, args.model or "r3d_18")
    rc = _train(train_argv, train_dir)
    if rc != 0:
        return rc  # preempted: no summary; the rerun resumes

    print("[4/4] summary")
    summary, rows = _summarize(out, train_dir, args.backend, device, t_start)
    _write_outputs(out, summary, rows)
    return 0


def write_report(rows: list[dict], path: Path, chance: float | None = None) -> None:
    """Loss and accuracy per epoch, and training clips/s, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r.get("train_loss") for r in rows], "o-")
    axes[0].set(title="train loss", xlabel="epoch")
    evaluated = [r for r in rows if r.get("val_acc1") is not None]  # --eval-every skips epochs
    axes[1].plot([r["epoch"] for r in evaluated], [r["val_acc1"] for r in evaluated], "o-", label="top-1")
    axes[1].plot([r["epoch"] for r in evaluated], [r["val_acc5"] for r in evaluated], "s--", label="top-5")
    if chance is not None:
        axes[1].axhline(chance, color="gray", lw=0.8, ls=":", label="chance")
    axes[1].set(title="val accuracy (%)", xlabel="epoch", ylim=(0, 101))
    axes[1].legend()
    axes[2].bar(epochs, [r.get("clips_per_s") or 0 for r in rows])
    axes[2].set(title="train clips/s", xlabel="epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
