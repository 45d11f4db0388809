"""Training logs: readable lines in a redirected log (no `\\r` frames), TensorBoard event files read
back with tensorboard's EventAccumulator, W&B offline runs (when wandb is installed)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from test_train_cli import env, rows, tiny_args

from fastvid.train import logs


def _train_to_file(args, log_path, extra_env=None):
    with open(log_path, "w") as f:
        r = subprocess.run([sys.executable, "-m", "fastvid", "train", *args], stdout=f, stderr=subprocess.STDOUT,
                           text=True, timeout=300, env=dict(env(), **(extra_env or {})))
    return r.returncode, log_path.read_text()


def test_redirected_log_has_lines_not_frames_and_tensorboard_reads_back(shard_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = tiny_args(shard_root, out, "--epochs", "2")
    args[args.index("--print-freq") + 1] = "3"
    rc, text = _train_to_file(args, tmp_path / "train.log")
    assert rc == 0, text[-3000:]
    assert "\r" not in text  # no progress-bar frames in a file
    # 8 videos x 2 clips / batch 2 = 8 steps: MetricLogger lines at steps 3, 6 and the last one.
    step_lines = [line for line in text.splitlines() if line.startswith("Epoch: [0]")]
    assert [re.search(r"\[\s*(\d+)/8\]", line).group(1) for line in step_lines] == ["3", "6", "8"]
    assert all("eta: " in line and "loss: " in line and "lr: " in line and "clips/s: " in line for line in step_lines)
    summaries = [line for line in text.splitlines() if re.match(r"Epoch \d+: train_loss", line)]
    assert len(summaries) == 2 and "eta " in summaries[0]

    metrics = rows(out)
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/clips_per_s", "train/data_wait_frac", "device/rss_mib",
            "epoch/train_loss", "epoch/val_acc1", "epoch/val_acc5", "epoch/clips_per_s", "epoch/data_wait_frac"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [3, 6, 8, 11, 14, 16]
    assert [e.step for e in acc.Scalars("epoch/val_acc1")] == [8, 16]
    assert [e.value for e in acc.Scalars("epoch/val_acc1")] == pytest.approx([m["val_acc1"] for m in metrics])
    assert [e.value for e in acc.Scalars("epoch/train_loss")] == pytest.approx([m["train_loss"] for m in metrics])
    assert all(0 <= e.value < 1 for e in acc.Scalars("train/data_wait_frac"))


def test_tensorboard_setting(tmp_path):
    assert logs.tensorboard_dir("none", tmp_path) is None
    assert logs.tensorboard_dir("off", tmp_path) is None
    assert logs.tensorboard_dir(str(tmp_path / "x"), tmp_path / "out") == tmp_path / "x"
    auto = logs.tensorboard_dir("auto", tmp_path)
    from fastvid._gpu import has_module

    assert auto == (tmp_path / "tb" if has_module("tensorboard") else None)


def test_line_progress_prints_every_print_freq_and_on_the_last_step(capsys):
    # Evaluation loops call only update(): lines at the print-freq steps and at the end.
    with logs.progress(5, "Test:", bars=False, print_freq=2) as p:
        for _ in range(5):
            p.update(1)
    lines = capsys.readouterr().out.splitlines()
    assert [re.search(r"\[(\d)/5\]", line).group(1) for line in lines] == ["2", "4", "5"]
    assert not logs.use_bars(False, stream=open(__file__))  # a file is no terminal
    assert not logs.use_bars(True, stream=sys.stdout)


def test_wandb_offline_run(shard_root, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    args = tiny_args(shard_root, out, "--epochs", "1", "--max-steps-per-epoch", "2", "--wandb", "--tensorboard", "none")
    rc, text = _train_to_file(args, tmp_path / "train.log", {"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert rc == 0, text[-3000:]
    assert not (out / "tb").exists()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # The offline run file (protobuf records) holds the logged keys; `wandb sync` uploads it later.
    data = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"train/loss" in data and b"epoch/val_acc1" in data and b"epoch/clips_per_s" in data


@pytest.mark.gpu
def test_device_stats_read_gpu_memory_and_utilization():
    import torch

    dev = torch.device("cuda", 0)
    x = torch.ones(1024, 1024, 4, device=dev)  # 16 MiB
    stats = logs.DeviceStats(dev).read()
    assert stats["gpu_mem_mib"] >= 16 and "rss_mib" not in stats
    assert 0 <= stats.get("gpu_util", 0) <= 100
    del x


def test_terminal_bar_feeds_the_sinks_too(tmp_path):
    # On a terminal the bar shows the values; TensorBoard still gets them at the print-freq steps.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sinks = logs.Sinks(tmp_path / "tb")
    with logs.progress(4, "Epoch: [1]", bars=True, print_freq=2, sinks=sinks, step_offset=4) as bar:
        for step in range(4):
            if step % 2 == 1:
                bar.set_postfix(loss=f"{1.5 - step / 10:.4f}", lr="0.01", clips_s="20.0", wait="25.0%")
            bar.update(1)
    sinks.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("train/loss")] == [(6, 1.4), (8, 1.2)]
    assert [e.value for e in acc.Scalars("train/data_wait_frac")] == pytest.approx([0.25, 0.25])
