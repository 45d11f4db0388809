"""The one Trainer (fastvid.train.trainer): video classification and event detection trained by the same
class on small real data (VP9 shards, generated GEN1 events; CPU, one process), the argument layer both
commands' flags come from, callbacks, the CPU thread choice, and what train-events gained from the
shared trainer: one run per output directory, --trust-checkpoint, one-line errors for checkpoints of
another model or width."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastvid.train.callbacks import Callback
from fastvid.train.trainer import Trainer


@pytest.fixture(scope="module")
def event_root(tmp_path_factory):
    from conftest import detection_shards

    return detection_shards(tmp_path_factory.mktemp("events"), train=(4, 1_000_000), val=(2, 1_000_000))


def video_options(shard_root, out, **extra) -> dict:
    return {"data_path": str(shard_root), "output_dir": str(out), "model": "r3d_18", "model_width": 8, "device": "cpu",
            "clip_len": 4, "frame_rate": None, "clips_per_video": 2, "batch_size": 2, "workers": 0, "lr": 0.01,
            "lr_warmup_epochs": 0, "lr_milestones": [5], "train_resize_size": [36, 48], "train_crop_size": [32, 32],
            "val_resize_size": [36, 48], "val_crop_size": [32, 32], "backend": "pyav", "tensorboard": "none",
            "epochs": 1, **extra}


def event_options(event_root, out, **extra) -> dict:
    return {"data_path": str(event_root), "output_dir": str(out), "device": "cpu", "batch_size": 2, "model_width": 4,
            "model_kwargs": {"stages": 3}, "tbptt_steps": 4, "lr": 4e-3, "lr_warmup_epochs": 0, "workers": 0,
            "min_box_diag": 8, "min_box_side": 4, "tensorboard": "none", "epochs": 1, **extra}


def event_args(event_root, out, *extra) -> list[str]:
    return ["--data-path", str(event_root), "--output-dir", str(out), "--device", "cpu", "-b", "2", "--model-width", "4",
            "--model-kwarg", "stages=3", "--tbptt-steps", "4", "--workers", "0", "--min-box-diag", "8",
            "--min-box-side", "4", *extra]


class Recorder(Callback):
    """What on_batch saw: (epoch, step, number of keys) per unit."""

    def __init__(self):
        self.seen = []

    def on_batch(self, epoch, step, unit):
        self.seen.append((epoch, step, len(unit.keys)))


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_one_trainer_trains_video_classification_and_event_detection(shard_root, event_root, tmp_path):
    from fastvid.events.detect.config import build_detect_config
    from fastvid.events.detect.task import EventDetection
    from fastvid.video.config import build_config
    from fastvid.video.task import VideoClassification

    video, events = Recorder(), Recorder()
    video_trainer = Trainer(VideoClassification(build_config(video_options(shard_root, tmp_path / "video"))), [video])
    event_trainer = Trainer(EventDetection(build_detect_config(event_options(event_root, tmp_path / "events",
                                                                             max_steps_per_epoch=12))), [events])
    assert type(video_trainer) is type(event_trainer) is Trainer
    assert video_trainer.run() == 0 and event_trainer.run() == 0

    (v,) = rows(tmp_path / "video")
    assert v["steps"] == 8 and v["val_videos"] == 6 and 0 <= v["val_acc1"] <= 100 and v["clips_per_s"] > 0
    # one unit per batch of 2 clips; the callback saw each with the step it starts at
    assert video.seen == [(0, s, 2) for s in range(8)]
    (e,) = rows(tmp_path / "events")
    # 12 windows in chunks of 4: 3 optimizer steps, the callback sees each chunk's first window index
    assert e["steps"] == 12 and e["labelled_windows"] > 0 and 0 <= e["val_mAP"] <= 1 and e["train_windows_per_s"] > 0
    assert [(epoch, step) for epoch, step, _ in events.seen] == [(0, 0), (0, 4), (0, 8)]
    for out, model_key in ((tmp_path / "video", "fc.weight"), (tmp_path / "events", None)):
        ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)  # plain data only
        assert ckpt["epoch"] == 0 and ckpt["lr_scheduler"]["last_epoch"] == (8 if model_key else 3)
        assert model_key is None or model_key in ckpt["model"]
    assert (tmp_path / "events" / "val_detections.npz").is_file()


# ---- the argument layer ------------------------------------------------------------------------------------------

# torchvision references/video_classification/train.py (get_args_parser) and the hand-written parser
# `fastvid train-events` had before the flags were generated from its config.
REFERENCE_FLAGS = ["--data-path", "--kinetics-version", "--model", "--device", "--clip-len", "--frame-rate",
                   "--clips-per-video", "-b", "--batch-size", "--epochs", "-j", "--workers", "--lr", "--momentum", "--wd",
                   "--weight-decay", "--lr-milestones", "--lr-gamma", "--lr-warmup-epochs", "--lr-warmup-method",
                   "--lr-warmup-decay", "--print-freq", "--output-dir", "--resume", "--start-epoch", "--cache-dataset",
                   "--sync-bn", "--test-only", "--use-deterministic-algorithms", "--world-size", "--dist-url",
                   "--val-resize-size", "--val-crop-size", "--train-resize-size", "--train-crop-size", "--weights", "--amp"]
TRAIN_EVENTS_FLAGS = ["--config", "--data-path", "--train-dir", "--val-dir", "--model", "--model-width", "--model-kwarg",
                      "--device", "-b", "--batch-size", "--epochs", "-j", "--workers", "--opt", "--lr", "--momentum", "--wd",
                      "--weight-decay", "--lr-milestones", "--lr-gamma", "--lr-warmup-epochs", "--lr-warmup-method",
                      "--lr-warmup-decay", "--print-freq", "--output-dir", "--resume", "--start-epoch", "--sync-bn",
                      "--test-only", "--speed-test", "--amp", "--amp-dtype", "--dist-url", "--seed", "--grad-clip",
                      "--window-ms", "--representation", "--bins", "--tbptt-steps", "--sampling", "--seq-len", "--flip-p",
                      "--max-zoom", "--classes", "--max-steps-per-epoch", "--eval-every", "--eval-preset", "--skip-ms",
                      "--min-box-diag", "--min-box-side", "--time-tol-ms", "--score-threshold", "--nms-iou"]


def _parser(command):
    from fastvid.cli import build_parser

    parser = build_parser([command])
    return next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(command))


@pytest.mark.parametrize("command, flags", [("train", REFERENCE_FLAGS), ("train-events", TRAIN_EVENTS_FLAGS)])
def test_both_commands_get_their_flags_from_the_config_dataclasses(command, flags):
    parser = _parser(command)
    strings = {s for action in parser._actions for s in action.option_strings}
    assert set(flags) <= strings
    # shared fields are the same flags in both commands; --trust-checkpoint now in train-events too (issue 21)
    assert {"--trust-checkpoint", "--save-every-steps", "--tensorboard", "--channels-last", "--log-keys"} <= strings
    text = parser.format_help()
    assert "--log-keys" not in text  # a hidden test/audit hook
    assert "(default: 0.1)" in text  # --lr-gamma's default shown


def test_train_events_defaults_and_yaml_come_from_its_own_config(tmp_path):
    from fastvid.events.detect.train_cli import config_from_args

    cfg = config_from_args(_parser("train-events").parse_args([]))
    assert (cfg.model, cfg.batch_size, cfg.lr, cfg.lr_milestones, cfg.amp_dtype, cfg.grad_clip) == \
        ("rnn_det_tiny", 8, 2e-4, [20, 25], "bf16", 10.0)
    (tmp_path / "d.yaml").write_text("wd: 0.5\nlr-milestones: [3]\n")
    cfg = config_from_args(_parser("train-events").parse_args(["--config", str(tmp_path / "d.yaml"), "--lr", "1e-3"]))
    assert (cfg.weight_decay, cfg.lr_milestones, cfg.lr) == (0.5, [3], 1e-3)


# ---- CPU threads (issue 20) -------------------------------------------------------------------------------------

def test_cpu_training_leaves_a_core_to_the_decoders_unless_told(monkeypatch):
    from fastvid.train.trainer import choose_cpu_threads

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        torch.set_num_threads(cores)  # torch's default
        assert choose_cpu_threads(torch.device("cpu")) == max(1, cores - 1) == torch.get_num_threads()
        if cores > 2:
            torch.set_num_threads(cores - 2)  # the user's choice is kept
            assert choose_cpu_threads(torch.device("cpu")) is None and torch.get_num_threads() == cores - 2
        torch.set_num_threads(cores)
        monkeypatch.setenv("OMP_NUM_THREADS", str(cores))
        assert choose_cpu_threads(torch.device("cpu")) is None and torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


# ---- train-events: what the shared trainer brought (issue 21) -----------------------------------------------------

def _env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("FASTVID_DEBUG", None)
    return e


def test_second_train_events_into_the_same_output_dir_refuses(event_root, tmp_path):
    out = tmp_path / "locked"
    first = subprocess.Popen([sys.executable, "-m", "fastvid", "train-events", *event_args(event_root, out, "--epochs", "500")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        for line in first.stdout:
            if line.startswith("optimizer:"):
                break
        else:
            raise AssertionError("the first run ended early")
        second = subprocess.run([sys.executable, "-m", "fastvid", "train-events", *event_args(event_root, out, "--epochs", "1")],
                                capture_output=True, text=True, timeout=300, env=_env())
        assert second.returncode == 1
        assert f"--output-dir {out} is in use by pid {first.pid}" in second.stderr.strip().splitlines()[-1]
        if (out / "metrics.jsonl").exists():  # only the first run's epochs, in order (nothing interleaved)
            epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert epochs == list(range(len(epochs)))
    finally:
        first.kill()
        first.communicate(timeout=60)


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _last_error(capsys, argv) -> str:
    from fastvid.cli import main

    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback or state_dict dump
    return err[0]


def test_train_events_checkpoint_errors_are_one_line_naming_the_file(event_root, shard_root, tmp_path, capsys):
    from fastvid.train.models import get_model

    # a foreign pickle: refused without --trust-checkpoint, which train-events now accepts
    evil, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"model": {}, "optimizer": {}, "lr_scheduler": {}, "epoch": 0, "x": _WritesAFile(marker)}, evil)
    err = _last_error(capsys, ["train-events", *event_args(event_root, tmp_path / "o1", "--resume", str(evil))])
    assert f"--resume {evil}: refusing to unpickle it" in err and "--trust-checkpoint" in err and not marker.exists()
    err = _last_error(capsys, ["train-events", *event_args(event_root, tmp_path / "o2", "--resume", str(evil),
                                                           "--trust-checkpoint")])
    assert marker.exists() and str(evil) in err and "does not fit" in err

    # a video checkpoint
    video = tmp_path / "video.pth"
    torch.save({"model": get_model("r3d_18", num_classes=2, width=8).state_dict(), "optimizer": {}, "lr_scheduler": {},
                "epoch": 3, "args": {"model": "r3d_18"}}, video)
    err = _last_error(capsys, ["train-events", *event_args(event_root, tmp_path / "o3", "--resume", str(video))])
    assert err.startswith(f"fastvid train-events: error: --resume {video}: this checkpoint is r3d_18, a classification "
                          "model; fastvid train-events trains detection models (")
    # a detector of another --model-width
    other = tmp_path / "wide.pth"
    torch.save({"model": get_model("rnn_det_tiny", in_channels=20, num_classes=2, width=8, stages=3).state_dict(),
                "optimizer": {}, "lr_scheduler": {}, "epoch": 0, "args": {"model": "rnn_det_tiny"}}, other)
    err = _last_error(capsys, ["train-events", *event_args(event_root, tmp_path / "o4", "--resume", str(other))])
    assert str(other) in err and "does not fit" in err and "shape" in err
    # ... and the same for fastvid train
    err = _last_error(capsys, ["train", "--data-path", str(shard_root), "--output-dir", str(tmp_path / "o5"), "--device",
                               "cpu", "--model", "r3d_18", "--model-width", "16", "-j", "0", "--backend", "pyav",
                               "--resume", str(video)])
    assert str(video) in err and "does not fit" in err and "shape" in err
