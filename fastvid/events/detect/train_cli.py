"""`fastvid train-events`: train (or evaluate) the recurrent event detector; torchrun ready.

    fastvid train-events --config events/rnn_det_gen1 --data-path shards/gen1 --output-dir runs/det
    torchrun --nproc_per_node=8 -m fastvid train-events --config ... --sync-bn --amp
"""

from __future__ import annotations

import argparse

from fastvid.events.detect.config import DetectConfig, build_detect_config
from fastvid.train.config import key_value

S = argparse.SUPPRESS
D = DetectConfig()


def add_arguments(p) -> None:
    def add(*flags, **kw):
        dest = kw.get("dest") or flags[-1].lstrip("-").replace("-", "_")
        default = getattr(D, dest, None)
        if "help" in kw and kw.get("action") != "store_true" and default not in (None, {}):
            kw["help"] += f" (default: {default})"
        p.add_argument(*flags, default=S, **kw)

    add("--config", metavar="FILE.yaml", help="YAML file of options; flags given here override it")
    p.add_argument("--allow-pipe", action="store_true", default=S,
                   help="let a --config file name pipe: commands as data paths (they run shell commands; same as "
                        "FASTVID_ALLOW_PIPE=1)")
    add("--data-path", help="directory holding the event shard sets (train-dir and val-dir inside)")
    add("--train-dir", help="training shard set under --data-path")
    add("--val-dir", help="validation shard set under --data-path")
    add("--model", help="detector (rnn_det_tiny, rnn_det_small)")
    add("--model-width", type=int, metavar="W", help="channels of the first stage")
    add("--model-kwarg", action="append", type=key_value, dest="model_kwargs", metavar="KEY=VALUE",
        help="extra detector argument, repeatable (e.g. stages=3 for strides 4/8/16 on small sensors)")
    add("--device", help="cuda, cpu or auto")
    add("-b", "--batch-size", type=int, help="streams per process (recordings or sequences played in parallel)")
    add("--epochs", type=int, metavar="N", help="number of epochs")
    add("-j", "--workers", type=int, metavar="N", help="segment reader threads")
    add("--opt", choices=["adamw", "sgd"], help="optimizer")
    add("--lr", type=float, help="initial learning rate")
    add("--momentum", type=float, help="SGD momentum")
    add("--wd", "--weight-decay", type=float, dest="weight_decay", help="weight decay")
    add("--lr-milestones", nargs="+", type=int, help="epochs at which the lr is multiplied by --lr-gamma")
    add("--lr-gamma", type=float, help="lr factor at each milestone")
    add("--lr-warmup-epochs", type=int, help="warmup epochs")
    add("--lr-warmup-method", choices=["linear", "constant"], help="warmup method")
    add("--lr-warmup-decay", type=float, help="lr factor at the start of warmup")
    add("--print-freq", type=int, help="optimizer steps between log lines")
    add("--output-dir", help="checkpoints, metrics.jsonl and val detections go here")
    add("--resume", help="checkpoint to resume from (exact, also mid-epoch after SIGTERM)")
    add("--start-epoch", type=int, help="first epoch (taken from the checkpoint when resuming)")
    add("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    add("--test-only", action="store_true", help="only evaluate (with --resume)")
    add("--speed-test", action="store_true", help="with --test-only: measure inference windows/s")
    add("--amp", action="store_true", help="mixed precision (bf16 unless --amp-dtype fp16)")
    add("--amp-dtype", choices=["bf16", "fp16"], help="autocast dtype")
    add("--dist-url", help="url used to set up distributed training")
    add("--seed", type=int, help="random seed")
    add("--grad-clip", type=float, metavar="NORM", help="clip the global gradient norm")
    add("--window-ms", type=float, help="window duration")
    add("--representation", help="event representation (fastvid.events.REPRESENTATIONS)")
    add("--bins", type=int, help="time bins of the representation")
    add("--tbptt-steps", type=int, metavar="K", help="windows per truncated back-propagation / optimizer step")
    add("--sampling", choices=["stream", "random"], help="whole recordings streamed, or random labelled sequences (RVT)")
    add("--seq-len", type=int, help="windows per random sequence")
    add("--flip-p", type=float, help="horizontal flip probability per sequence")
    add("--max-zoom", type=float, help="zoom-in up to this factor per sequence (1: off)")
    add("--classes", help="comma-separated class names (default: the shard set's)")
    add("--max-steps-per-epoch", type=int, metavar="N", help="cut every epoch to N windows")
    add("--eval-every", type=int, metavar="N", help="evaluate every N epochs and after the last")
    add("--eval-preset", choices=["gen1", "gen4"], help="Prophesee box filter thresholds")
    add("--skip-ms", type=float, help="evaluation ignores boxes up to this time")
    add("--min-box-diag", type=float, help="evaluation's minimum box diagonal (px)")
    add("--min-box-side", type=float, help="evaluation's minimum box side (px)")
    add("--time-tol-ms", type=float, help="evaluation's label/detection time tolerance")
    add("--score-threshold", type=float, help="minimum detection score kept")
    add("--nms-iou", type=float, help="NMS IoU threshold")


def config_from_args(args) -> DetectConfig:
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    if given.pop("allow_pipe", False):
        from fastvid.train.config import allow_pipe

        allow_pipe()
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    return build_detect_config(given)


def run(args) -> int:
    from fastvid.events.detect.trainer import run_training

    return run_training(config_from_args(args))
