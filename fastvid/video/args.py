"""`fastvid train` flags: torchvision's references/video_classification/train.py flags with the same
names, meanings and defaults, plus fastvid's. Every flag defaults to "not given" (argparse.SUPPRESS)
so that only flags typed on the command line override a --config YAML file; the real defaults live
in fastvid.train.config.TrainConfig and are shown in --help.
"""

from __future__ import annotations

import argparse

from fastvid.train.config import key_value
from fastvid.video.config import FIELD_TYPES, TrainConfig, build_config

D = TrainConfig()
S = argparse.SUPPRESS


def _optional_float(text: str):
    return None if text.lower() in ("none", "native", "0") else float(text)


EPILOG = ("Exit status: 0 done; 1 error; 75 (EX_TEMPFAIL) preempted: SIGTERM stopped training after the current "
          "step, skipped evaluation and saved OUTPUT/checkpoint.pth; rerun with --resume OUTPUT/checkpoint.pth to continue.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    def add(*flags, **kw):
        default = getattr(D, kw.get("dest") or flags[-1].lstrip("-").replace("-", "_"), None)
        if "help" in kw and kw.get("action") not in ("store_true",) and default not in (None, {}):
            kw["help"] += f" (default: {default})"
        p.add_argument(*flags, default=S, **kw)

    add("--config", metavar="NAME|FILE.yaml", help="a shipped recipe by name (e.g. r2plus1d_18_k400; see fastvid.configs) or a YAML file of options (dashed or underscored names); flags given here override it")
    add("--data-path", help="directory holding the shard sets made by `fastvid shard` (train-dir and val-dir inside)")
    add("--train-dir", help="name of the training shard set directory under --data-path")
    add("--val-dir", help="name of the validation shard set directory under --data-path")
    add("--model", help="model name (fastvid.train.models.list_models())")
    add("--device", help="cuda, cpu, or auto")
    add("--clip-len", type=int, metavar="N", help="number of frames per clip")
    add("--frame-rate", type=_optional_float, help="sample clips as if videos ran at this frame rate (torchvision's meaning; none: native rate, see --frame-stride)")
    add("--clips-per-video", type=int, metavar="N", help="clips per video (random at train, uniform at eval, averaged per video)")
    add("-b", "--batch-size", type=int, help="clips per process; the total batch is world_size x batch_size")
    add("--epochs", type=int, metavar="N", help="number of total epochs to run")
    add("-j", "--workers", type=int, metavar="N", help="loader threads (DALI) / decode workers (PyAV) per process")
    add("--lr", type=float, help="initial learning rate (for the whole world's batch)")
    add("--momentum", type=float, metavar="M", help="SGD momentum")
    add("--wd", "--weight-decay", type=float, metavar="W", dest="weight_decay", help="weight decay")
    add("--lr-milestones", nargs="+", type=int, help="epochs at which the lr is multiplied by --lr-gamma")
    add("--lr-gamma", type=float, help="decrease lr by a factor of lr-gamma")
    add("--lr-warmup-epochs", type=int, help="the number of epochs to warmup")
    add("--lr-warmup-method", type=str.lower, choices=["linear", "constant"], help="the warmup method (any case, as torchvision lower-cases it)")
    add("--lr-warmup-decay", type=float, help="the lr factor at the start of warmup")
    add("--print-freq", type=int, help="steps between log lines / progress updates, TensorBoard step scalars and NaN checks (SIGTERM is checked every step)")
    add("--output-dir", help="where checkpoints, metrics.jsonl and traces go")
    add("--resume", help="checkpoint to resume from (e.g. OUTPUT/checkpoint.pth)")
    add("--start-epoch", type=int, metavar="N", help="start epoch (taken from the checkpoint when resuming)")
    add("--cache-dataset", action="store_true",
        help="accepted for compatibility and ignored: shards need no clip-index cache (torchvision caches its VideoClips scan)")
    add("--sync-bn", action="store_true", help="convert BatchNorm to SyncBatchNorm before DDP")
    add("--test-only", action="store_true", help="only evaluate (use with --resume or --weights)")
    add("--use-deterministic-algorithms", action="store_true", help="force deterministic torch algorithms")
    add("--world-size", type=int, help="number of processes (set by torchrun through WORLD_SIZE)")
    add("--dist-url", help="url used to set up distributed training")
    add("--weights", metavar="FILE|NAME", help="weights to start from: a torchvision-format FILE (state_dict or {'model': ...}) or "
        "torchvision's name (R3D_18_Weights.KINETICS400_V1, MC3_18_..., R2Plus1D_18_..., S3D_Weights.KINETICS400_V1, "
        "Enum.DEFAULT or DEFAULT), read from torchvision's download cache $TORCH_HOME/hub/checkpoints")
    add("--amp", action="store_true", help="mixed precision as torchvision: fp16 autocast with a GradScaler; --amp-dtype bf16 "
        "uses bf16 autocast without a scaler (fp16 + GradScaler instead where the GPU lacks bf16)")
    add("--kinetics-version", choices=["400", "600"], help="Kinetics version: checked against the shard set's classes")
    add("--train-resize-size", nargs="+", type=int, help="train resize (h w); default: the preset's")
    add("--train-crop-size", nargs="+", type=int, help="train crop (h w); default: the preset's (112; 224 for --model s3d and tsm_resnet50)")
    add("--val-resize-size", nargs="+", type=int, help="eval resize (h w); default: the preset's")
    add("--val-crop-size", nargs="+", type=int, help="eval crop (h w); default: the preset's")
    # fastvid additions
    from fastvid.pipeline import backends

    add("--backend", type=str.lower, choices=["auto", *backends.names("video")], help="loader backend (auto: the fastest that can decode the shards here)")
    add("--preset", type=str.lower, choices=["video_resnet", "s3d", "tsm"], help="augmentation preset; default follows the model (s3d -> s3d: resize 256x256, crop 224, where torchvision's reference crops 112 unless given --train-crop-size; tsm_resnet50 -> tsm; others -> video_resnet: resize 128x171, crop 112)")
    add("--frame-stride", type=int, help="distance between a clip's frames, counted at --frame-rate (source frames: N x fps / frame-rate), or at the native rate when --frame-rate is none")
    add("--channels-last", action="store_true", help="channels_last_3d memory format for model and input")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--amp-dtype", type=str.lower, choices=["bf16", "fp16"], help="autocast dtype with --amp: fp16 (with a GradScaler, torchvision's) or bf16")
    add("--grad-clip", type=float, metavar="NORM", help="clip the global gradient norm")
    add("--profile-steps", metavar="A-B", help="write a torch.profiler trace of global steps A..B to OUTPUT/profile/")
    add("--seed", type=int, help="random seed (model init and clip sampling)")
    add("--model-kwarg", action="append", type=key_value, dest="model_kwargs", metavar="KEY=VALUE",
        help="extra model builder argument, repeatable (e.g. width=16)")
    add("--model-width", type=int, metavar="W", help="channel width of the first stage (torchvision: 64); same architecture, fewer channels")
    add("--max-steps-per-epoch", type=int, metavar="N", help="cut every epoch to N steps")
    add("--label-smoothing", type=float, help="cross-entropy label smoothing")
    add("--eval-every", type=int, metavar="N", help="evaluate every N epochs and after the last")
    add("--trust-checkpoint", action="store_true",
        help="allow --resume/--weights files that hold more than tensors and plain data (legacy or foreign pickles); "
             "unpickling such a file can run code, so only for files you trust")
    add("--tensorboard", metavar="DIR", help="write TensorBoard event files to DIR ('auto': OUTPUT/tb when tensorboard is installed; 'none': off)")
    add("--wandb", action="store_true", help="also log to Weights & Biases (pip install 'fastvid[wandb]'; WANDB_MODE=offline needs no network)")
    add("--wandb-project", help="Weights & Biases project name")
    add("--no-progress", action="store_true", help="no progress bars: a log line every --print-freq steps (the default when stderr is not a terminal)")
    add("--step-between-clips", type=int, metavar="N", help="frames (at --frame-rate) between the starts of a video's grid clips, torchvision's step_between_clips")
    add("--short-videos", choices=["drop", "pad"], help="videos shorter than one clip: drop (torchvision) or pad with the last frame")
    add("--clip-sampling", choices=["without_replacement", "with_replacement"],
        help="training clips per video: drawn from the clip grid without replacement (torchvision's RandomClipSampler) or with")
    add("--num-segments", type=int, metavar="N", help="TSN sampling (PaddleVideo TSM): one frame from each of N equal segments "
        "(random offset in training, centre in evaluation); sets the clip length to N")
    add("--eval-views", metavar="TxS", help="evaluation views per video: T uniform clips x S crops (1 centre; 3 along the long "
        "side), decoded once per video; default: --clips-per-video x 1 (torchvision's)")
    add("--save-every-steps", type=int, metavar="N", help="also checkpoint every N training steps; resumable on another number of ranks")
    add("--stream-window", type=int, metavar="N", help="remote (streamed) sets: shards each rank holds in the local cache at "
        "once (the block it reads and the next); FASTVID_CACHE_SIZE must hold N shards per rank of the node")
    p.add_argument("--allow-pipe", action="store_true", default=S,
                   help="let a --config recipe name pipe: commands as data paths (they run shell commands; same as "
                        "FASTVID_ALLOW_PIPE=1)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig for parsed flags: defaults <- --config YAML <- flags given."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command",)}
    if given.pop("allow_pipe", False):
        from fastvid.train.config import allow_pipe

        allow_pipe()
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    cfg = build_config(given)
    if "model_kwargs" in given and cfg.config:
        # flags add to (not replace) the YAML's model_kwargs
        from fastvid.train.config import load_yaml

        merged = dict(load_yaml(cfg.config, FIELD_TYPES).get("model_kwargs") or {})
        merged.update(given["model_kwargs"])
        cfg.model_kwargs = merged
    return cfg


def parse_config(argv: list[str]) -> TrainConfig:
    p = argparse.ArgumentParser(prog="fastvid train")
    add_arguments(p)
    return config_from_args(p.parse_args(argv))
