"""Typed configuration of `fastvid train` (video classification): dataclass defaults <- YAML file <- flags
(the machinery is fastvid.train.config's).

Field names are the `dest` names of torchvision's references/video_classification/train.py flags
(clip_len, lr_warmup_epochs, ...), plus fastvid's own (backend, preset, amp_dtype, ...). A YAML file
may spell keys with dashes or underscores; unknown keys and wrong types are errors naming the file.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from fastvid.train.config import coerce, load_yaml, parse_step_range


@dataclass
class TrainConfig:
    # --- torchvision reference flags (same meaning; defaults as the reference unless noted) ---
    data_path: str | None = None          # directory holding the train/val shard sets
    train_dir: str = "train"              # shard set sub-directory (torchvision: a folder of videos)
    val_dir: str = "val"
    model: str = "r2plus1d_18"
    device: str = "auto"                  # torchvision: "cuda"; "auto" = cuda when visible, else cpu
    clip_len: int = 16
    frame_rate: float | None = 15.0
    clips_per_video: int = 5
    batch_size: int = 24
    epochs: int = 45
    workers: int = 10
    lr: float = 0.64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: list[int] = field(default_factory=lambda: [20, 30, 40])
    lr_gamma: float = 0.1
    lr_warmup_epochs: int = 10
    lr_warmup_method: str = "linear"
    lr_warmup_decay: float = 0.001
    print_freq: int = 10
    output_dir: str = "."
    resume: str = ""
    start_epoch: int = 0
    cache_dataset: bool = False
    sync_bn: bool = False
    test_only: bool = False
    use_deterministic_algorithms: bool = False
    world_size: int = 1
    dist_url: str = "env://"
    amp: bool = False
    kinetics_version: str | None = None   # "400"/"600": checked against the shard set's class count
    train_resize_size: list[int] | None = None  # None: the preset's (video_resnet: 128 171)
    train_crop_size: list[int] | None = None    # None: the preset's (video_resnet: 112 112)
    val_resize_size: list[int] | None = None
    val_crop_size: list[int] | None = None
    weights: str | None = None            # a torchvision-format checkpoint file
    # --- fastvid additions ---
    config: str | None = None
    backend: str = "auto"                 # loader backend: auto | dali | pyav
    preset: str | None = None             # augmentation preset; None: from the model (tsm, s3d, video_resnet)
    frame_stride: int = 1                 # counted at frame_rate (native rate when frame_rate is None)
    channels_last: bool = False
    compile: bool = False
    amp_dtype: str = "fp16"               # fp16 + GradScaler (torchvision's --amp) | bf16 (no scaler; fp16 where unsupported)
    grad_clip: float | None = None        # max global grad norm
    profile_steps: str | None = None      # "A-B": torch.profiler trace of global steps [A, B)
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)  # extra builder kwargs, e.g. {"width": 16}
    model_width: int | None = None        # shorthand for model_kwargs width (channel width of the first stage)
    max_steps_per_epoch: int | None = None  # cut epochs short (smoke tests, benchmarks)
    label_smoothing: float = 0.0
    eval_every: int = 1                   # evaluate every N epochs (and after the last)
    trust_checkpoint: bool = False        # allow full unpickling of --resume/--weights (can run code)
    tensorboard: str = "auto"             # event-file dir; auto: OUTPUT/tb when tensorboard is installed; none: off
    wandb: bool = False                   # log to Weights & Biases (extra `wandb`; WANDB_MODE=offline works offline)
    wandb_project: str = "fastvid"
    no_progress: bool = False             # log lines instead of progress bars even on a terminal
    # --- clip sampling (fastvid.video.sampling; defaults are torchvision's) ---
    step_between_clips: int = 1           # frames between the starts of a video's grid clips (torchvision reference: 1)
    short_videos: str = "drop"            # drop (torchvision) | pad (repeat the last frame)
    clip_sampling: str = "without_replacement"  # RandomClipSampler | with_replacement (fastvid's former random starts)
    num_segments: int | None = None       # TSN sampling: one frame from each of N equal segments (clip_len = N)
    eval_views: str | None = None         # "TxS": T uniform clips x S spatial crops (1 or 3); None = clips_per_video x 1
    save_every_steps: int | None = None   # also checkpoint every N training steps (mid-epoch, resumable on any world size)
    stream_window: int = 8                # remote (streamed) sets: shards each rank holds locally at once

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES = typing.get_type_hints(TrainConfig)
FIELD_NAMES = [f.name for f in dataclasses.fields(TrainConfig)]


def build_config(overrides: dict | None = None, config_path: str | Path | None = None) -> TrainConfig:
    """TrainConfig from defaults, then the YAML file (if any), then explicit `overrides`."""
    overrides = dict(overrides or {})
    config_path = overrides.get("config", config_path)
    values = load_yaml(config_path, FIELD_TYPES) if config_path else {}
    for name, value in overrides.items():
        if name not in FIELD_TYPES:
            raise ValueError(f"unknown training option {name!r}")
        values[name] = coerce(name, value, "command line", FIELD_TYPES)
    if config_path:
        from fastvid.configs import resolve

        values["config"] = str(resolve(config_path))
    cfg = TrainConfig(**values)
    cfg.lr_warmup_method = cfg.lr_warmup_method.lower()  # torchvision lower-cases it ("Linear" works there)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    if cfg.short_videos not in ("drop", "pad"):
        raise ValueError(f"short_videos must be drop or pad, got {cfg.short_videos!r}")
    if cfg.clip_sampling not in ("without_replacement", "with_replacement"):
        raise ValueError(f"clip_sampling must be without_replacement or with_replacement, got {cfg.clip_sampling!r}")
    if cfg.num_segments is not None and cfg.num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {cfg.num_segments}")
    if cfg.save_every_steps is not None and cfg.save_every_steps < 1:
        raise ValueError(f"save_every_steps must be >= 1, got {cfg.save_every_steps}")
    if cfg.eval_views is not None:
        parse_views(cfg.eval_views)
    if cfg.amp_dtype not in ("bf16", "fp16"):
        raise ValueError(f"amp_dtype must be bf16 or fp16, got {cfg.amp_dtype!r}")
    if cfg.lr_warmup_method not in ("linear", "constant"):
        raise ValueError(f"Invalid warmup lr method '{cfg.lr_warmup_method}'. Only linear and constant are supported.")
    for name in ("clip_len", "batch_size", "clips_per_video", "frame_stride", "print_freq", "eval_every", "step_between_clips",
                 "stream_window"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.frame_rate is not None and cfg.frame_rate <= 0:
        raise ValueError(f"frame_rate must be > 0 (or none for the native rate), got {cfg.frame_rate}")
    for name in ("train_resize_size", "train_crop_size", "val_resize_size", "val_crop_size"):
        v = getattr(cfg, name)
        if v is not None and len(v) not in (1, 2):
            raise ValueError(f"{name} takes 1 or 2 integers (h w), got {v}")
    if cfg.profile_steps is not None:
        parse_step_range(cfg.profile_steps)


def parse_views(text: str) -> tuple[int, int]:
    """'TxS' -> (T temporal clips, S spatial crops), S in (1, 3)."""
    try:
        t, s = (int(x) for x in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"eval_views must look like TxS (e.g. 10x3), got {text!r}") from None
    if t < 1 or s not in (1, 3):
        raise ValueError(f"eval_views {text!r}: need T >= 1 temporal clips and S = 1 or 3 spatial crops")
    return t, s


def eval_views(cfg: TrainConfig) -> tuple[int, int]:
    """(T, S) of evaluation: --eval-views, else torchvision's clips_per_video uniform clips x 1 centre crop."""
    return parse_views(cfg.eval_views) if cfg.eval_views else (cfg.clips_per_video, 1)
