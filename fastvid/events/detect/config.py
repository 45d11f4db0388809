"""Typed configuration of `fastvid train-events`: dataclass defaults <- YAML (--config) <- flags.

Names follow torchvision's reference flags where one applies (batch_size, lr, lr_milestones, ...,
resume, sync_bn, amp, output_dir); the rest are the event detector's own.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field


@dataclass
class DetectConfig:
    # --- as torchvision's reference flags ---
    data_path: str | None = None      # directory holding the event shard sets
    train_dir: str = "train"
    val_dir: str = "val"
    model: str = "rnn_det_tiny"
    device: str = "auto"
    batch_size: int = 8               # streams (recordings played in parallel) per process
    epochs: int = 30
    workers: int = 4                  # segment reader threads per loader
    lr: float = 2e-4
    momentum: float = 0.9             # SGD only
    weight_decay: float = 1e-4
    lr_milestones: list[int] = field(default_factory=lambda: [20, 25])
    lr_gamma: float = 0.1
    lr_warmup_epochs: int = 1
    lr_warmup_method: str = "linear"
    lr_warmup_decay: float = 0.01
    print_freq: int = 10
    output_dir: str = "."
    resume: str = ""
    start_epoch: int = 0
    sync_bn: bool = False
    test_only: bool = False
    amp: bool = False
    amp_dtype: str = "bf16"
    dist_url: str = "env://"
    seed: int = 0
    grad_clip: float | None = 10.0
    # --- detector and event data ---
    config: str | None = None
    opt: str = "adamw"                # adamw | sgd (fastvid.train.optim's fused SGD)
    model_width: int | None = None    # channels of the first stage (tiny: 16, small: 32)
    model_kwargs: dict = field(default_factory=dict)  # extra builder arguments, e.g. {"stages": 3}
    window_ms: float = 50.0
    window_mode: str = "labels"       # labels: each window ends at a label time (RVT) | grid: consecutive windows
    label_times: str = "all"          # which label times get a window: all | rvt-gen1 | rvt-gen4 (RVT's selection)
    fill_windows: bool = False        # labels mode: unlabelled windows tile the time between label windows
    representation: str = "stacked_histogram"
    bins: int = 10
    tbptt_steps: int = 10             # windows per truncated back-propagation (and per optimizer step)
    sampling: str = "stream"          # stream: whole recordings in order | random: RVT-style labelled sequences
    seq_len: int = 20                 # windows per random sequence
    flip_p: float = 0.5
    max_zoom: float = 1.0             # zoom-in up to this factor (1: off), drawn per sequence
    classes: str | None = None        # comma-separated; default: the shard set's classes
    max_steps_per_epoch: int | None = None
    eval_every: int = 1
    speed_test: bool = False          # with --test-only: report inference windows/s only
    # --- evaluation (Prophesee protocol) ---
    eval_preset: str = "gen1"
    skip_ms: float | None = None
    min_box_diag: float | None = None
    min_box_side: float | None = None
    time_tol_ms: float | None = None
    score_threshold: float = 0.05
    nms_iou: float = 0.5

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES = typing.get_type_hints(DetectConfig)


def build_detect_config(overrides: dict | None = None) -> DetectConfig:
    from fastvid.train.config import coerce, load_yaml

    overrides = dict(overrides or {})
    path = overrides.get("config")
    values = load_yaml(path, FIELD_TYPES) if path else {}
    for name, value in overrides.items():
        if name not in FIELD_TYPES:
            raise ValueError(f"unknown train-events option {name!r}")
        values[name] = coerce(name, value, "command line", FIELD_TYPES)
    cfg = DetectConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: DetectConfig) -> None:
    for name in ("batch_size", "epochs", "tbptt_steps", "seq_len", "bins", "print_freq", "eval_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    choices = {"opt": ("adamw", "sgd"), "sampling": ("stream", "random"), "amp_dtype": ("bf16", "fp16"),
               "lr_warmup_method": ("linear", "constant"), "eval_preset": ("gen1", "gen4"),
               "window_mode": ("labels", "grid"), "label_times": ("all", "rvt-gen1", "rvt-gen4")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.window_ms <= 0 or cfg.max_zoom < 1 or not 0 <= cfg.flip_p <= 1:
        raise ValueError("window_ms must be > 0, max_zoom >= 1 and flip_p in [0, 1]")
