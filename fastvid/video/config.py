"""Typed configuration of `fastvid train` (video classification): the shared TrainerConfig fields plus the
video task's (the machinery, flags included, is fastvid.train.config's).

Field names are the `dest` names of torchvision's references/video_classification/train.py flags
(clip_len, lr_warmup_epochs, ...) with the reference's defaults, plus fastvid's own (backend, preset,
frame_stride, ...). A YAML file may spell keys with dashes or underscores; unknown keys and wrong types
are errors naming the file.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

from fastvid.train import config as C
from fastvid.train.config import TrainerConfig, option, retune



def _backend_choices() -> list[str]:
    from fastvid.pipeline import backends

    return ["auto", *backends.names("video")]


@dataclass
class TrainConfig(TrainerConfig):
    batch_size: int = retune(TrainerConfig, "batch_size", 24,
                             help="clips per process; the total batch is world_size x batch_size")
    workers: int = retune(TrainerConfig, "workers", 10, help="loader threads (DALI) / decode workers (PyAV) per process")
    max_steps_per_epoch: int | None = retune(TrainerConfig, "max_steps_per_epoch", None, help="cut every epoch to N steps (batches)")
    save_every_steps: int | None = retune(TrainerConfig, "save_every_steps", None,
                                          help="also checkpoint every N training steps; resumable on another number of ranks")
    model_width: int | None = retune(TrainerConfig, "model_width", None,
                                     help="channel width of the first stage (torchvision: 64); same architecture, fewer channels")
    # --- torchvision reference flags of the video task ---
    clip_len: int = option(16, metavar="N", help="number of frames per clip")
    frame_rate: float | None = option(15.0, type=C.optional_float,
                                      help="sample clips as if videos ran at this frame rate (torchvision's meaning; none: "
                                           "native rate, see --frame-stride)")
    clips_per_video: int = option(5, metavar="N", help="clips per video (random at train, uniform at eval, averaged per video)")
    cache_dataset: bool = option(False, help="accepted for compatibility and ignored: shards need no clip-index cache "
                                             "(torchvision caches its VideoClips scan)")
    world_size: int = option(1, help="number of processes (set by torchrun through WORLD_SIZE)")
    kinetics_version: str | None = option(None, choices=("400", "600"),
                                          help="Kinetics version: checked against the shard set's classes")
    train_resize_size: list[int] | None = option(None, help="train resize (h w); default: the preset's")
    train_crop_size: list[int] | None = option(None, help="train crop (h w); default: the preset's (112; 224 for --model "
                                                          "s3d and tsm_resnet50)")
    val_resize_size: list[int] | None = option(None, help="eval resize (h w); default: the preset's")
    val_crop_size: list[int] | None = option(None, help="eval crop (h w); default: the preset's")
    weights: str | None = option(None, metavar="FILE|NAME", help=(
        "weights to start from: a torchvision-format FILE (state_dict or {'model': ...}) or torchvision's name "
        "(R3D_18_Weights.KINETICS400_V1, MC3_18_..., R2Plus1D_18_..., S3D_Weights.KINETICS400_V1, Enum.DEFAULT or DEFAULT), "
        "read from torchvision's download cache $TORCH_HOME/hub/checkpoints"))
    # --- fastvid additions ---
    backend: str = option("auto", type=str.lower, choices=_backend_choices,
                          help="loader backend (auto: the fastest that can decode the shards here)")
    preset: str | None = option(None, type=str.lower, choices=("video_resnet", "s3d", "tsm"), help=(
        "augmentation preset; default follows the model (s3d -> s3d: resize 256x256, crop 224, where torchvision's "
        "reference crops 112 unless given --train-crop-size; tsm_resnet50 -> tsm; others -> video_resnet: resize "
        "128x171, crop 112)"))
    frame_stride: int = option(1, help="distance between a clip's frames, counted at --frame-rate (source frames: N x fps / "
                                       "frame-rate), or at the native rate when --frame-rate is none")
    label_smoothing: float = option(0.0, help="cross-entropy label smoothing")
    step_between_clips: int = option(1, metavar="N", help="frames (at --frame-rate) between the starts of a video's grid "
                                                          "clips, torchvision's step_between_clips")
    short_videos: str = option("drop", choices=("drop", "pad"),
                               help="videos shorter than one clip: drop (torchvision) or pad with the last frame")
    clip_sampling: str = option("without_replacement", choices=("without_replacement", "with_replacement"), help=(
        "training clips per video: drawn from the clip grid without replacement (torchvision's RandomClipSampler) or with"))
    num_segments: int | None = option(None, metavar="N", help=(
        "TSN sampling (PaddleVideo TSM): one frame from each of N equal segments (random offset in training, centre in "
        "evaluation); sets the clip length to N"))
    eval_views: str | None = option(None, metavar="TxS", help=(
        "evaluation views per video: T uniform clips x S crops (1 centre; 3 along the long side), decoded once per video; "
        "default: --clips-per-video x 1 (torchvision's)"))
    last_batch: str = option("partial", choices=("partial", "drop"), help=(
        "the epoch's last training batch: partial (torchvision: the last batch may be smaller, the same size on every "
        "rank, short ranks padded by repeating clips) or drop (only full rounds of world_size x batch_size clips)"))
    stream_window: int = option(8, metavar="N", help=(
        "remote (streamed) sets: shards each rank holds in the local cache at once (the block it reads and the next); "
        "FASTVID_CACHE_SIZE must hold N shards per rank of the node"))

    def validate(self) -> None:
        super().validate()
        if self.short_videos not in ("drop", "pad"):
            raise ValueError(f"short_videos must be drop or pad, got {self.short_videos!r}")
        if self.clip_sampling not in ("without_replacement", "with_replacement"):
            raise ValueError(f"clip_sampling must be without_replacement or with_replacement, got {self.clip_sampling!r}")
        if self.last_batch not in ("partial", "drop"):
            raise ValueError(f"last_batch must be partial or drop, got {self.last_batch!r}")
        if self.num_segments is not None and self.num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {self.num_segments}")
        if self.eval_views is not None:
            parse_views(self.eval_views)
        for name in ("clip_len", "clips_per_video", "frame_stride", "step_between_clips", "stream_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frame_rate is not None and self.frame_rate <= 0:
            raise ValueError(f"frame_rate must be > 0 (or none for the native rate), got {self.frame_rate}")
        for name in ("train_resize_size", "train_crop_size", "val_resize_size", "val_crop_size"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, 2):
                raise ValueError(f"{name} takes 1 or 2 integers (h w), got {v}")


FIELD_TYPES = typing.get_type_hints(TrainConfig)


def build_config(overrides: dict | None = None, config_path: str | Path | None = None) -> TrainConfig:
    """TrainConfig from defaults, then the YAML file (if any), then explicit `overrides`."""
    return C.build_config(TrainConfig, overrides, config_path)


def parse_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig of `fastvid train ARGV` (the flags fastvid.video.train_cli adds)."""
    import argparse

    parser = argparse.ArgumentParser(prog="fastvid train")
    C.add_arguments(parser, TrainConfig, "video classification options")
    return C.config_from_args(parser.parse_args(argv), TrainConfig)


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
