"""Typed configuration of `fastvid train-events`: the shared TrainerConfig fields (torchvision's reference
names, with the detector's defaults) plus the event detector's own; flags are generated from the fields
(fastvid.train.config), values come from defaults <- YAML (--config) <- flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastvid.train import config as C
from fastvid.train.config import TrainerConfig, option, retune


@dataclass
class DetectConfig(TrainerConfig):
    # --- shared fields, the detector's defaults ---
    data_path: str | None = retune(TrainerConfig, "data_path", None,
                                   help="directory holding the event shard sets (--train-dir and --val-dir inside)")
    model: str = retune(TrainerConfig, "model", "rnn_det_tiny", help="detector (rnn_det_tiny, rnn_det_small)")
    batch_size: int = retune(TrainerConfig, "batch_size", 8,
                             help="streams per process (recordings or sequences played in parallel)")
    epochs: int = retune(TrainerConfig, "epochs", 30)
    workers: int = retune(TrainerConfig, "workers", 4, help="segment reader threads")
    lr: float = retune(TrainerConfig, "lr", 2e-4)
    lr_milestones: list[int] = retune(TrainerConfig, "lr_milestones", [20, 25])
    lr_warmup_epochs: int = retune(TrainerConfig, "lr_warmup_epochs", 1)
    lr_warmup_decay: float = retune(TrainerConfig, "lr_warmup_decay", 0.01)
    output_dir: str = retune(TrainerConfig, "output_dir", ".",
                             help="checkpoints, metrics.jsonl and val detections go here (one run at a time: it is locked)")
    test_only: bool = retune(TrainerConfig, "test_only", False, help="only evaluate (with --resume)")
    amp: bool = retune(TrainerConfig, "amp", False, help="mixed precision (bf16 unless --amp-dtype fp16; fp16 uses a GradScaler)")
    amp_dtype: str = retune(TrainerConfig, "amp_dtype", "bf16")
    grad_clip: float | None = retune(TrainerConfig, "grad_clip", 10.0)
    model_width: int | None = retune(TrainerConfig, "model_width", None, help="channels of the first stage")
    model_kwargs: dict = retune(TrainerConfig, "model_kwargs", {}, help=(
        "extra detector argument, repeatable (e.g. stages=3 for strides 4/8/16 on small sensors)"))
    max_steps_per_epoch: int | None = retune(TrainerConfig, "max_steps_per_epoch", None, help="cut every epoch to N windows")
    save_every_steps: int | None = retune(TrainerConfig, "save_every_steps", None, help=(
        "also checkpoint every N optimizer steps (TBPTT chunks); resumable on the same number of ranks"))
    # --- detector and event data ---
    opt: str = option("adamw", choices=("adamw", "sgd"), help="optimizer (sgd: torch's fused SGD, as fastvid train)")
    window_ms: float = option(50.0, help="window duration")
    window_mode: str = option("labels", choices=("labels", "grid"), help=(
        "labels: every window ends at a label time T, holds the events of [T - window, T] and is supervised by T's "
        "boxes (RVT); grid: consecutive windows supervised by the latest label inside them"))
    label_times: str = option("all", choices=("all", "rvt-gen1", "rvt-gen4"), help=(
        "labels mode: which label times get a window: all, or RVT's selection (see fastvid.events.labels)"))
    fill_windows: bool = option(False, help="labels mode: unlabelled windows tile the time between label windows")
    representation: str = option("stacked_histogram", help="event representation (fastvid.events.REPRESENTATIONS)")
    bins: int = option(10, help="time bins of the representation")
    tbptt_steps: int = option(10, metavar="K", help="windows per truncated back-propagation / optimizer step")
    sampling: str = option("stream", choices=("stream", "random"),
                           help="whole recordings streamed, or random labelled sequences (RVT)")
    seq_len: int = option(20, help="windows per random sequence")
    flip_p: float = option(0.5, help="horizontal flip probability per sequence")
    max_zoom: float = option(1.0, help="zoom-in up to this factor per sequence (1: off)")
    classes: str | None = option(None, help="comma-separated class names (default: the shard set's)")
    speed_test: bool = option(False, help="with --test-only: measure inference windows/s")
    # --- evaluation (Prophesee protocol) ---
    eval_preset: str = option("gen1", choices=("gen1", "gen4"), help="Prophesee box filter thresholds")
    skip_ms: float | None = option(None, help="evaluation ignores boxes up to this time")
    min_box_diag: float | None = option(None, help="evaluation's minimum box diagonal (px)")
    min_box_side: float | None = option(None, help="evaluation's minimum box side (px)")
    time_tol_ms: float | None = option(None, help="evaluation's label/detection time tolerance")
    score_threshold: float = option(0.05, help="minimum detection score kept")
    nms_iou: float = option(0.5, help="NMS IoU threshold")

    def validate(self) -> None:
        super().validate()
        for name in ("epochs", "tbptt_steps", "seq_len", "bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        choices = {"opt": ("adamw", "sgd"), "sampling": ("stream", "random"), "eval_preset": ("gen1", "gen4")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.window_ms <= 0 or self.max_zoom < 1 or not 0 <= self.flip_p <= 1:
            raise ValueError("window_ms must be > 0, max_zoom >= 1 and flip_p in [0, 1]")


def build_detect_config(overrides: dict | None = None, config_path: str | Path | None = None) -> DetectConfig:
    """DetectConfig from defaults, then the YAML file (if any), then explicit `overrides`."""
    return C.build_config(DetectConfig, overrides, config_path)
