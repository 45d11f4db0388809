"""`fastvid train`: parse torchvision-reference flags (+ --config YAML) and run the trainer.

Works run directly (one process) and under `torchrun --nproc_per_node=N -m fastvid train ...`
(or `torchrun $(which fastvid) train ...`): torchrun's env:// variables select DDP.
"""

from __future__ import annotations

from fastvid.video.args import add_arguments as _add_arguments
from fastvid.video.args import config_from_args


def add_arguments(parser) -> None:
    _add_arguments(parser)


def run(args) -> int:
    from fastvid.video.trainer import run_training

    return run_training(config_from_args(args))
