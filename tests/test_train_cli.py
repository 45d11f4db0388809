"""`fastvid train` end to end on tiny real shards (VP9 in WebDataset tars, decoded by the real loader):
one process and `torchrun --nproc_per_node=2` with gloo. A narrow r3d_18 (width 8) on 32x32 crops of
4-frame clips keeps the real architecture while fitting a 2-core machine."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def tiny_args(data: Path, out: Path, *extra) -> list[str]:
    return ["--data-path", str(data), "--model", "r3d_18", "--model-width", "8", "--device", "cpu", "--clip-len", "4",
            "--frame-rate", "none", "--clips-per-video", "2", "-b", "2", "-j", "0", "--lr", "0.01", "--lr-warmup-epochs", "1",
            "--lr-milestones", "2", "--train-resize-size", "36", "48", "--train-crop-size", "32", "32", "--val-resize-size",
            "36", "48", "--val-crop-size", "32", "32", "--print-freq", "1", "--backend", "pyav", "--output-dir", str(out),
            *extra]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("FASTVID_DEBUG", None)
    return e


def run_train(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastvid", "train", *args], capture_output=True, text=True, timeout=timeout, env=env())


def run_torchrun(args, timeout=400):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "fastvid", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_row(row, epoch, world_size):
    assert row["epoch"] == epoch and row["world_size"] == world_size
    assert math.isfinite(row["train_loss"]) and 0.0 < row["train_loss"] < 5.0
    assert 0.0 <= row["val_acc1"] <= row["val_acc5"] <= 100.0
    assert row["clips_per_s"] > 0 and 0.0 <= row["data_wait_frac"] < 1.0
    assert row["cpu_percent"] > 0 and row["max_mem"] > 10  # MiB
    assert row["gpu_util_mean"] is None  # no GPU here
    for key in ("lr", "val_acc1", "val_acc5", "clips_per_s", "data_wait_frac", "gpu_util_mean", "cpu_percent", "max_mem"):
        assert key in row


def test_single_process_trains_checkpoints_profiles(shard_root, tmp_path):
    out = tmp_path / "run"
    r = run_train(tiny_args(shard_root, out, "--epochs", "2", "--profile-steps", "1-3", "--cache-dataset"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--cache-dataset is unnecessary" in r.stdout
    got = rows(out)
    assert [g["epoch"] for g in got] == [0, 1]
    for g in got:
        check_row(g, g["epoch"], 1)
        assert g["val_videos"] == 6 and g["val_clips"] == 12  # 6 val videos x 2 clips, padding not counted
    # 8 videos x 2 clips / batch 2 = 8 steps/epoch; warmup is epoch 0, then x0.1 at epoch 2 (= after 8 main steps)
    assert got[0]["steps"] == 8
    assert got[0]["lr"] == pytest.approx(0.01) and got[1]["lr"] == pytest.approx(0.001)
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint.pth", "model_0.pth", "model_1.pth"]
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["args"]["cache_dataset"] is True and ckpt["lr_scheduler"]["last_epoch"] == 16
    assert "fc.weight" in ckpt["model"] and ckpt["model"]["fc.weight"].shape == (2, 64)  # width 8 -> 64 features
    assert got[0]["backend"] == "pyav" and got[0]["decode_failures"] == 0
    # the pipeline's stage statistics reach the metrics: seconds per loader stage this epoch
    assert got[0]["loader_stage_s"]["decode"] > 0 and got[0]["loader_stage_s"]["wait"] > 0
    trace = json.loads((out / "profile" / "trace_rank0.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("conv" in n for n in names)


def test_resume_continues_exactly(shard_root, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_train(tiny_args(shard_root, straight, "--epochs", "2")).returncode == 0
    assert run_train(tiny_args(shard_root, split, "--epochs", "1")).returncode == 0
    r = run_train(tiny_args(shard_root, split, "--epochs", "2", "--resume", str(split / "checkpoint.pth")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "epoch 1" in r.stdout
    assert [g["epoch"] for g in rows(split)] == [0, 1]
    # identical inputs are a precondition (a skipped/replaced sample would change the data, not the resume)
    assert [g["decode_failures"] for g in rows(split) + rows(straight)] == [0, 0, 0, 0]
    a = torch.load(straight / "checkpoint.pth", map_location="cpu", weights_only=False)
    b = torch.load(split / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert b["epoch"] == 1 and b["lr_scheduler"]["last_epoch"] == a["lr_scheduler"]["last_epoch"]
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-6, msg=f"{k} differs after resume")
    assert rows(split)[1]["train_loss"] == pytest.approx(rows(straight)[1]["train_loss"], rel=1e-5)


def test_the_last_partial_batch_is_kept_as_torchvision_does_and_cpu_threads_leave_a_core(shard_root, tmp_path):
    """16 training clips in batches of 3: torchvision's DataLoader runs ceil(16 / 3) = 6 steps, the last with one
    clip, and so does fastvid by default (--last-batch partial); --last-batch drop runs the 5 full batches. Run
    without OMP_NUM_THREADS, CPU training leaves a core to the decoders (as quickstart did)."""
    from fastvid.train.callbacks import read_key_log

    out, keys = tmp_path / "tail", tmp_path / "keys.jsonl"
    e = env()
    e.pop("OMP_NUM_THREADS")
    r = subprocess.run([sys.executable, "-m", "fastvid", "train", *tiny_args(shard_root, out, "--epochs", "1", "-b", "3",
                                                                          "--log-keys", str(keys))],
                       capture_output=True, text=True, timeout=300, env=e)
    assert r.returncode == 0, r.stderr[-3000:]
    cores = len(os.sched_getaffinity(0))
    assert f"CPU: {max(1, cores - 1)} torch thread(s), a core left to the decoders" in r.stdout
    assert rows(out)[0]["steps"] == 6
    taken = read_key_log(keys)
    assert [len(row["keys"]) for row in taken] == [3, 3, 3, 3, 3, 1]
    clips = [(k, c) for row in taken for k, c in zip(row["keys"], row["clips"])]
    assert len(set(clips)) == 16  # every clip of the epoch once
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["lr_scheduler"]["last_epoch"] == 6 and ckpt["loader"]["position"] == 16

    r = run_train(tiny_args(shard_root, tmp_path / "drop", "--epochs", "1", "-b", "3", "--last-batch", "drop"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert rows(tmp_path / "drop")[0]["steps"] == 5 and "CPU:" not in r.stdout  # OMP_NUM_THREADS=1 is kept


def test_nan_loss_stops_with_clear_message(shard_root, tmp_path):
    out = tmp_path / "nan"
    r = run_train(tiny_args(shard_root, out, "--epochs", "2", "--lr", "1e30", "--lr-warmup-epochs", "0"))
    assert r.returncode == 1
    assert "fastvid train: error: loss is nan" in r.stderr and "training diverged" in r.stderr
    assert not (out / "model_0.pth").exists()


def test_bad_data_path_is_one_clear_error(tmp_path):
    r = run_train(tiny_args(tmp_path / "nowhere", tmp_path / "o", "--epochs", "1"))
    assert r.returncode == 1
    assert "is not a shard set (no manifest.json)" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_exits_preempted(shard_root, tmp_path):
    out = tmp_path / "preempt"
    proc = subprocess.Popen([sys.executable, "-m", "fastvid", "train", *tiny_args(shard_root, out, "--epochs", "500")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Epoch 0:"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 75, text[-3000:]  # EX_TEMPFAIL: preempted, resume from the checkpoint
    assert "SIGTERM" in text
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    done = ckpt["epoch"]
    assert 0 <= done < 499
    # resume finishes the interrupted epoch (from the saved step when it was mid-epoch) and one more
    r = run_train(tiny_args(shard_root, out, "--epochs", str(done + 3), "--resume", str(out / "checkpoint.pth")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [g["epoch"] for g in rows(out)][-2:] == [done + 1, done + 2]


@pytest.mark.slow
def test_torchrun_two_ranks_syncbn_resume_and_test_only(shard_root, tmp_path):
    out = tmp_path / "ddp"
    r = run_torchrun(tiny_args(shard_root, out, "--epochs", "2", "--sync-bn"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "cpu x2 (gloo)" in r.stdout
    assert "SyncBatchNorm: converted 20 BatchNorm layers (CPUSyncBatchNorm)" in r.stdout
    got = rows(out)
    assert [g["epoch"] for g in got] == [0, 1]
    for g in got:
        check_row(g, g["epoch"], 2)
        assert g["steps"] == 4  # 8 videos / 2 ranks x 2 clips / batch 2
        assert g["val_videos"] == 6 and g["val_clips"] == 12  # ranks pad by wrapping; nothing counted twice

    r = run_torchrun(tiny_args(shard_root, out, "--epochs", "3", "--sync-bn", "--resume", str(out / "checkpoint.pth")))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "resumed from" in r.stdout and ": epoch 2" in r.stdout
    got = rows(out)
    assert [g["epoch"] for g in got] == [0, 1, 2]
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == 2 and ckpt["lr_scheduler"]["last_epoch"] == 3 * 4
    assert got[2]["lr"] == pytest.approx(0.001)  # milestone 2 reached: the schedule continued

    evald = tmp_path / "eval"
    r = run_torchrun(tiny_args(shard_root, evald, "--test-only", "--resume", str(out / "checkpoint.pth")))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "Video Acc@1" in r.stdout
    res = json.loads((evald / "eval.json").read_text())
    assert res["world_size"] == 2 and res["val_videos"] == 6 and res["val_clips"] == 12
    assert res["val_acc1"] == pytest.approx(got[2]["val_acc1"])  # same weights, same clips -> same accuracy

    # multi-view: 2 clips x 3 crops per video, decoded once; batches of 4 make each rank wrap around (20 of 18 views)
    views = tmp_path / "views"
    r = run_torchrun(tiny_args(shard_root, views, "--test-only", "--eval-views", "2x3", "-b", "4", "--resume",
                               str(out / "checkpoint.pth")))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads((views / "eval.json").read_text())
    assert res["val_videos"] == 6 and res["val_clips"] == 36 and res["val_clips_per_s"] > 0
    assert 0 <= res["val_acc1"] <= res["val_acc5"] <= 100


@pytest.mark.slow
def test_bench_train_reports_both_measurements(shard_root):
    from fastvid.benchmarks.train import TrainBench, run_benchmark

    res = run_benchmark(TrainBench(models=["r3d_18"], shards=shard_root / "train", device="cpu", backend="pyav", tiny=True,
                                   steps=3, warmup=1, repeats=2, variants=["eager"]))
    entry = res["models"]["r3d_18"]
    step = res["step_variants"]["r3d_18"]
    assert step["best"] == "eager" and step["variants"]["eager"]["numerics_ok"] and step["variants"]["eager"]["clips_per_s"] > 0
    assert res["config"]["backend"] == "pyav" and res["config"]["videos"] == 8
    for kind in ("synthetic", "shards"):
        assert entry[kind]["clips_per_s"] == max(entry[kind]["all_clips_per_s"]) > 0 and entry[kind]["steps"] == 3
        assert math.isfinite(entry[kind]["final_loss"])
    assert entry["synthetic"]["data_wait_frac"] < entry["shards"]["data_wait_frac"] <= 1.0
    assert entry["shards_vs_synthetic_ratio"] == pytest.approx(entry["shards"]["clips_per_s"] / entry["synthetic"]["clips_per_s"], rel=0.01)


@pytest.mark.gpu
def test_gpu_amp_fp16_channels_last_training(shard_root, tmp_path):
    out = tmp_path / "gpu"
    args = tiny_args(shard_root, out, "--epochs", "2", "--amp", "--amp-dtype", "fp16", "--channels-last", "--sync-bn")
    args[args.index("--device") + 1] = "cuda"
    args[args.index("--backend") + 1] = "auto"
    r = run_train(args)
    assert r.returncode == 0, r.stderr[-3000:]
    got = rows(out)
    assert [g["epoch"] for g in got] == [0, 1]
    assert all(g["max_mem"] > 0 and math.isfinite(g["train_loss"]) for g in got)
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0


def test_yaml_config_drives_a_run_and_flags_override_it(shard_root, tmp_path):
    out = tmp_path / "cfg"
    # A shipped recipe by name (package data), not a path.
    r = run_train(["--config", "quickstart", "--data-path", str(shard_root), "--output-dir", str(out), "--device", "cpu",
                   "--backend", "pyav", "-j", "0", "--epochs", "1", "--max-steps-per-epoch", "2", "--eval-every", "1"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fastvid train: r2plus1d_18 on cpu" in r.stdout  # model from the YAML
    row = rows(out)[0]
    assert row["steps"] == 2 and row["epoch"] == 0  # epochs/steps from the flags
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["args"]["model_kwargs"] == {"width": 8} and ckpt["args"]["lr"] == 0.05
    assert ckpt["model"]["layer1.0.conv1.0.0.weight"].shape[1] == 8
    assert Path(ckpt["args"]["config"]).name == "quickstart.yaml" and Path(ckpt["args"]["config"]).is_file()


@pytest.mark.slow
def test_torchrun_sigterm_stops_every_rank_at_the_same_step(shard_root, tmp_path):
    """SIGTERM to torchrun (it forwards it to the workers): the ranks agree on the step, rank 0 writes the
    mid-epoch checkpoint, every worker exits 75, and the resume finishes the epoch."""
    out, keys = tmp_path / "ddp_stop", tmp_path / "keys.jsonl"
    args = tiny_args(shard_root, out, "--epochs", "50", "--print-freq", "1000", "-b", "1")  # 8 steps per epoch
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "fastvid", "train", *args]
    proc = subprocess.Popen([*cmd, "--log-keys", str(keys)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env())
    import time

    while not (keys.exists() and len(keys.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert "exiting with code 75 (preempted)" in text, text[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    if "resume_epoch" not in ckpt:  # the signal landed in an epoch's last step: epoch checkpoint, no evaluation
        assert rows(out)[-1]["preempted"] is True and rows(out)[-1]["val_acc1"] is None
        return
    per_rank = {}
    for line in keys.read_text().splitlines():
        row = json.loads(line)
        per_rank.setdefault(row["rank"], []).append(row["epoch"])
    steps = {rank: epochs.count(ckpt["resume_epoch"]) for rank, epochs in per_rank.items()}
    assert steps == {0: ckpt["resume_step"], 1: ckpt["resume_step"]}  # both ranks stopped after the same step
    r = run_torchrun(tiny_args(shard_root, out, "--epochs", str(ckpt["resume_epoch"] + 1), "-b", "1",
                               "--resume", str(out / "checkpoint.pth")))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert rows(out)[-1]["epoch"] == ckpt["resume_epoch"] and rows(out)[-1]["steps"] == 8 - ckpt["resume_step"]


def test_tsn_segments_train_tsm_end_to_end(shard_root, tmp_path):
    out = tmp_path / "tsm"
    r = run_train(tiny_args(shard_root, out, "--model", "tsm_resnet50", "--preset", "tsm", "--num-segments", "4", "--epochs", "1",
                            "--max-steps-per-epoch", "2", "--val-resize-size", "36", "--clips-per-video", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clip_len=4" in r.stdout and "sampler='segments'" in r.stdout and "AMP off" in r.stdout
    row = rows(out)[0]
    assert row["steps"] == 2 and row["val_videos"] == 6 and row["val_clips"] == 6
